# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A bare-metal host through its BMC's Redfish API: discover, read, power, boot override, virtual media.

Standard library and ansible's ``open_url`` only. The HTTP transport is injected, so retries, error
mapping and planning are unit-tested on a fake BMC; the default transport is tested against
sushy-tools.

The files, from the wire up; each imports only files above it:

- ``errors``: RedfishError and its kinds (auth refused, unreachable, unsupported, timed out).
- ``transport``: HttpRequest, HttpResponse, the Transport type and OpenUrlTransport (HTTP over
  ansible's ``open_url``: basic auth, TLS, no redirects, no proxy); NoAnswer and
  ``describe_no_answer`` for a request that got no HTTP answer.
- ``retry``: RetryPolicy (backoff), ``parse_retry_after``, ``may_retry`` (which answers are worth
  another try, by method).
- ``client``: RedfishClient, JSON to one BMC: URLs, requests with retries, error messages,
  redaction of the credentials, ETags; ``parse_bmc_url``, ``redfish_message``.
- ``facts``: what is read of a system: SystemFacts, BootOverride, Nic, MediaDevice.
- ``system``: RedfishSystem, one ComputerSystem: locate it, read its facts, power it (ResetType
  choice, polling), set the boot override, insert and eject virtual media.
- ``host``: what the module does: BmcRequest (validated parameters), RedfishHost (read, compare,
  change unless check mode, read back), BmcOutcome (the result), ``connect``, ``apply_request``.
"""
