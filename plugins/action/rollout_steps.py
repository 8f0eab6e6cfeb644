# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One instance's whole part of a rollout, in one task (see the module's documentation).

Every instance of the play runs this action at the same moment, each in its own fork. They meet in
the rollout journal (``planner.report.next_move``, under its lock): an instance either claims the
traffic step that is due and runs it on every LB from here (``lb_traffic``'s own code, in this
process), or cycles itself when its batch is drained (the ``instance_cycle`` module over its own
connection), or waits, reading the journal again only when it changed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.berth.fleet.plugins.module_utils.common.failure import ModuleFailure
from ansible_collections.berth.fleet.plugins.module_utils.planner import journal as rollout_journal
from ansible_collections.berth.fleet.plugins.module_utils.planner import report
from ansible_collections.berth.fleet.plugins.modules import instance_cycle, lb_traffic, rollout_steps
from ansible_collections.berth.fleet.plugins.plugin_utils.rollout_sampling import Sampling

display = Display()
JOURNAL_FAULTS = (rollout_journal.JournalError, KeyError, TypeError, ValueError)
POLL_SECONDS = 0.05  # how often a waiting instance looks whether the journal changed
REREAD_SECONDS = 1.0  # and reads it anyway
STEP_LISTS = ("ready", "drain", "wait_drained", "cycle")


class Refused(ValueError):
    """Arguments this action cannot run with; the message names the option."""


def validated(spec: dict[str, Any], params: dict[str, Any], option: str) -> dict[str, Any]:
    outcome = ArgumentSpecValidator(spec).validate(params)
    if outcome.error_messages:
        raise Refused(f"{option}: {'; '.join(outcome.error_messages)}")
    return dict(outcome.validated_parameters)


def plan_steps(raw: list[dict[str, Any]]) -> list[dict[str, list[str]]]:
    steps = []
    for index, step in enumerate(raw):
        lists = {key: step.get(key, []) for key in STEP_LISTS}
        if not all(isinstance(v, list) and all(isinstance(h, str) for h in v) for v in lists.values()):
            raise Refused(f"steps[{index}]: {', '.join(STEP_LISTS)} must be lists of host names: {step!r}")
        steps.append(lists)
    return steps


def describe(step: dict[str, list[str]]) -> str:
    said = [f"ready {','.join(step['ready'])}" if step["ready"] else ""]
    said.append(f"drain {','.join(step['drain'])}" if step["drain"] else "")
    return ", ".join(s for s in said if s) or "nothing to move"


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        _validation, params = self.validate_argument_spec(argument_spec=dict(rollout_steps.ARGUMENT_SPEC))
        try:
            self._traffic = validated(
                lb_traffic.ARGUMENT_SPEC, {**params["traffic"], "action": "step"}, "traffic"
            )
            self._cycle = validated(instance_cycle.ARGUMENT_SPEC, params["cycle"], "cycle")
            self._steps = plan_steps(params["steps"])
            self._where: dict[str, Any] = rollout_journal.where_of(params["journal"])
        except (Refused, KeyError) as exc:
            return {**result, "failed": True, "msg": f"berth.fleet.rollout_steps: {exc}"}
        self._host = str(task_vars["inventory_hostname"])
        self._task_vars = task_vars
        self._parts: list[dict[str, Any]] = []
        self._cycle_result: dict[str, Any] = {}
        if params["halt"]:
            return {**result, **self._halt(params["halt"])}
        if self._task.check_mode:
            return {**result, **self._check()}
        try:
            # held for as long as this part runs: a rerun waits for it (journal.wait_for_earlier_parts)
            path = rollout_journal.where_path(self._where)
            # the first part to start also samples every LB for the rollout report (<service>.report.html)
            sampling = Sampling(self._where, self._traffic, self._host, idle_limit=self._stall_seconds())
            with rollout_journal.parts_lock(path), sampling:
                return {**result, **self._roll()}
        except JOURNAL_FAULTS as exc:
            return {**result, **self._answer(failed=True, msg=f"the rollout journal cannot be used: {exc}")}

    # -- a real run: meet the other instances in the journal ---------------------------------------
    def _stall_seconds(self) -> float:
        """How long a part waits with nothing recorded in the journal before it gives up."""
        cycle_timeout = float(self._cycle["health"]["timeout"])
        return float(self._traffic["ready_timeout"] + self._traffic["drain_timeout"] + cycle_timeout + 60)

    def _roll(self) -> dict[str, Any]:
        stall = self._stall_seconds()
        waited, seen, read_at, moved_at = 0.0, None, 0.0, time.monotonic()
        journal: dict[str, Any] = {}
        parent = os.getppid()
        while True:
            now = time.monotonic()
            if os.getppid() != parent:  # ansible-playbook is gone (a worker outlives it): stop here
                return self._answer(failed=True, waited=waited, msg="ansible-playbook ended: stopped waiting")
            current = report.signature(self._where)
            if current != seen:
                moved_at = now
            if current == seen and now - read_at < REREAD_SECONDS:
                move, index = "wait", -1
            else:
                move, index, journal = report.next_move(self._where, self._host)
                seen, read_at = report.signature(self._where), now
                if "run" not in self._where and move != "halted":  # this play's run, from now on
                    self._where["run"] = (journal.get("run") or {}).get("id")
                    if [self._step_of(s) for s in journal["run"]["steps"]] != self._steps:
                        return self._answer(
                            failed=True,
                            msg="the rollout journal holds another plan than this play's: "
                            "is another deploy of this service running?",
                        )
            if move == "wait":
                if now - moved_at > stall:
                    return self._answer(
                        failed=True,
                        waited=waited,
                        msg=f"no part of the rollout reported for {stall:.0f} s while {self._host} waited "
                        f"for step {index + 1}: see the journal ({self._where['service']}.json)",
                    )
                time.sleep(POLL_SECONDS)
                waited += POLL_SECONDS
                continue
            if move == "traffic":
                if not self._run_traffic(index):
                    return self._answer(failed=True, waited=waited, msg=self._parts[-1]["msg"])
            elif move == "cycle":
                if not self._run_cycle(index):
                    return self._answer(failed=True, waited=waited, msg=self._parts[-1]["msg"])
            elif move == "superseded":
                return self._answer(
                    failed=True, waited=waited, msg=f"run {self._where['run']} was superseded: stopped"
                )
            elif move == "halted":
                return self._answer(
                    waited=waited,
                    msg=f"the rollout halted at {journal.get('halted_at')}: {journal.get('reason')}; "
                    f"{self._host} stops here",
                )
            else:
                return self._answer(waited=waited, msg=self._summary(waited))

    @staticmethod
    def _step_of(step: dict[str, Any]) -> dict[str, list[str]]:
        return {key: list(step.get(key, [])) for key in STEP_LISTS}

    def _run_traffic(self, index: int, check: bool = False) -> bool:
        step = self._steps[index]
        params = {
            **self._traffic,
            "ready": step["ready"],
            "drain": step["drain"],
            "wait_drained": step["wait_drained"],
            "journal": None if check else {**self._where, "step": index},
        }
        started = time.monotonic()
        try:
            answer, failed = lb_traffic.run(params, check, display.display), False
        except ModuleFailure as failure:
            answer, failed = {"msg": str(failure), **failure.fields}, True
        except Exception as exc:  # a bug here must not leave the claim for the others to wait on
            if not check:
                broken, where = {"failed": True, "msg": repr(exc)}, {**self._where, "step": index}
                for lb in self._traffic["lbs"]:
                    report.record_step(where, "traffic", lb["name"], time.time(), broken)
            raise
        seconds = time.monotonic() - started
        if answer.get("skipped"):  # the journal halted between the claim and the step
            failed = False
        part = {"step": index, "part": "traffic", "seconds": round(seconds, 2), "failed": failed, **answer}
        part.setdefault("msg", describe(step))
        self._parts.append(part)
        lbs = ", ".join(lb["name"] for lb in self._traffic["lbs"])
        waits = []
        if step["ready"]:
            waits.append(f"UP after {float(answer.get('ready_wait') or 0):.1f} s")
        if step["wait_drained"]:
            waits.append(f"idle after {float(answer.get('drain_wait') or 0):.1f} s")
        display.display(
            f"{self._where['service']} step {index + 1}/{len(self._steps)} on {lbs}: {describe(step)}"
            f"{' (' + ', '.join(waits) + ')' if waits else ''}, {seconds:.1f} s"
            + (f" - FAILED: {answer.get('msg')}" if failed else "")
            + (" (check mode: nothing sent)" if check else ""),
            color="red" if failed else None,
        )
        return not failed

    def _run_cycle(self, index: int, check: bool = False) -> bool:
        where = {**self._where, "step": index}
        if not check:
            why, _keep_out = report.gate_step(where, "cycle")
            if why:
                self._parts.append({"step": index, "part": "cycle", "skipped": True, "msg": why})
                return True
        started, wall = time.time(), time.monotonic()
        if not check:  # what the cycle is about to wait for (the module says nothing until it ends)
            health = self._cycle["health"]
            held = f", then {health['min_healthy_time']:g} s healthy" if health["min_healthy_time"] else ""
            display.display(
                f"{self._where['service']} step {index + 1}/{len(self._steps)}: {self._host} to "
                f"{self._cycle['version']}: stop, switch, start, then its health gate ({health['rise']} "
                f"passing checks {health['interval']:g} s apart{held}; up to {health['timeout']:g} s)"
            )
        try:
            result = self._execute_module(
                "berth.fleet.instance_cycle", module_args=dict(self._cycle), task_vars=self._task_vars
            )
        except AnsibleConnectionFailure as exc:
            if not check:  # the journal learns it too, then Ansible reports the host unreachable
                lost = {"unreachable": True, "msg": str(exc)}
                report.record_step(where, "cycle", self._host, started, lost)
            raise
        result.pop("invocation", None)
        if not check:
            report.record_step(where, "cycle", self._host, started, result)
        failed = bool(result.get("failed"))
        self._cycle_result = result
        seconds = round(time.monotonic() - wall, 2)
        self._parts.append({"step": index, "part": "cycle", "seconds": seconds, "failed": failed, **result})
        if failed:
            said = f"FAILED: {result.get('msg')}"
        elif result.get("changed"):
            said = f"healthy after {float(result.get('risen_after') or 0):.1f} s"
        else:
            said = "already there"
        display.display(
            f"{self._where['service']} step {index + 1}/{len(self._steps)}: {self._host} to "
            f"{self._cycle['version']}: {said}, {seconds:.1f} s" + (" (check mode)" if check else ""),
            color="red" if failed else None,
        )
        return not failed

    def _halt(self, why: str) -> dict[str, Any]:
        """This instance cannot take part: its part halts the rollout now, as a failed cycle would."""
        mine = [index for index, step in enumerate(self._steps) if self._host in step["cycle"]]
        if mine and not self._task.check_mode:
            where = {**self._where, "step": mine[0]}
            try:
                report.record_step(where, "cycle", self._host, time.time(), {"failed": True, "msg": why})
            except JOURNAL_FAULTS as exc:
                why = f"{why}; and the journal could not record it: {exc}"
        display.display(f"{self._where['service']}: {self._host} halts the rollout: {why}", color="red")
        return self._answer(failed=True, msg=why)

    # -- check mode: what this instance's parts would change, no journal ---------------------------
    def _check(self) -> dict[str, Any]:
        for index, step in enumerate(self._steps):
            owners = step["cycle"] or (self._steps[index - 1]["cycle"] if index else [])
            if owners and owners[0] == self._host and self._traffic["lbs"]:
                self._run_traffic(index, check=True)
            if self._host in step["cycle"]:
                self._run_cycle(index, check=True)
        failed = [part for part in self._parts if part.get("failed")]
        if failed:
            return self._answer(failed=True, msg=str(failed[0].get("msg")))
        return self._answer(msg=f"check mode: {self._host} looked at {len(self._parts)} rollout part(s)")

    def _answer(self, failed: bool = False, waited: float = 0.0, msg: str = "") -> dict[str, Any]:
        diffs = [part["diff"] for part in self._parts if isinstance(part.get("diff"), dict)]
        answer: dict[str, Any] = {
            "changed": any(part.get("changed") for part in self._parts),
            "parts": self._parts,
            "cycle": self._cycle_result,
            "waited": round(waited, 2),
            "msg": msg,
        }
        if diffs:
            answer["diff"] = diffs
        if failed:
            answer["failed"] = True
        return answer

    def _summary(self, waited: float) -> str:
        traffic = [part["step"] + 1 for part in self._parts if part["part"] == "traffic"]
        cycled = [part for part in self._parts if part["part"] == "cycle" and not part.get("skipped")]
        said = f"{self._host} on {self._cycle['version']}" if cycled else f"{self._host}: nothing to cycle"
        if traffic:
            said += f"; ran traffic step(s) {', '.join(map(str, traffic))} for every instance"
        return f"{said}; waited {waited:.1f} s for the others"
