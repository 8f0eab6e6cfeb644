# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A typed layer over libvirt: storage pools, networks, uploaded volumes and VMs.

Everything goes through the libvirt API of one connection, local or remote (``qemu+ssh://``). The
files, from the bottom up:

- ``errors.py``: the guarded import of the bindings, ``LibvirtError`` and how libvirt's errors become it
- ``changes.py``: ``Changes`` (record a change, make it unless in check mode) and the ``Outcome``
- ``xmlutil.py``: parsing and building XML, scaled integers
- ``storage.py``: pools, volumes and disk images as data (parameters, XML, header inspection, upload)
- ``connection.py``: the connection, its lookups, and ``Manager``, the base of the managers
- ``pools.py``, ``volumes.py``, ``network.py``: the managers of pools, uploaded volumes and networks
- ``domain.py``: a VM's parameters and their validation; its volume names and stable MACs
- ``domain_xml.py``: the domain XML rendered, merged with what libvirt assigned, compared
- ``vm_disks.py``, ``vm_power.py``, ``vm.py``: a VM's disks and seed, its power state, the VM manager
- ``seed.py``: the cloud-init NoCloud seed image
- ``hypervisor.py``: ``Hypervisor``, the connection with the four managers, which the modules use
- ``module.py``: ``run_on_hypervisor``, what every libvirt module does around its one call
"""
