"""The portal gates of a run: each instruction shown, recorded, and handed to the gate command.

`dwlib.clients.dualwrite.PortalAdmin` calls `notify` with an `Instruction` whenever a portal-only
action is needed, then polls the documented reads until the result is verified. `Gates` is that
`notify` for a runbook: it shows the instruction, notes in the run record that the step waits for
it, keeps it for the step's entry in the record, and runs the gate command (if any) with the
instruction as JSON on stdin: the one the environment names (`DW_GATE_COMMAND`, which
`dw run --gate-command` sets), e.g. to page the consultant, else the built-in handler the
parameters choose (`options.gates: sandbox-consultant` runs `dw sandbox consultant`, which plays
the consultant against a local sandbox). A parameters file never names a command itself.

Interactively (`hold=True`) and without a gate command, nobody should sit through the polling:
a kernel that polls cannot receive the click of a button. `notify` then raises `GateWaiting`, the
runbook records the step as waiting, and running the step again (the "Verify now" button of
`dwlib.ui`) checks first and finds the work done once the consultant did it. The instruction is
then the gate panel's to show, once; it is printed only where no panel shows it.

Example:
    >>> program(["no-such-program-anywhere"])
    ['no-such-program-anywhere']
    >>> gate_command("sandbox-consultant", {"DW_GATE_COMMAND": "notify-me --team dw"})
    ['notify-me', '--team', 'dw']
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dwlib import text
from dwlib.clients.dualwrite import Instruction
from dwlib.params import Params
from dwlib.record import RunRecord
from dwlib.secrets import scrub


def program(argv: list[str]) -> list[str]:
    """`argv` with its program found on PATH, or else beside the running Python (a venv's scripts)."""
    if shutil.which(argv[0]):
        return argv
    beside = Path(sys.executable).parent / argv[0]
    return [str(beside), *argv[1:]] if beside.is_file() else argv


GATE_ENV = "DW_GATE_COMMAND"  # a command line (shell words, no shell) run at each gate
HANDLERS = {"show": None, "sandbox-consultant": ["dw", "sandbox", "consultant"]}  # options.gates


def gate_command(gates: str, environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The command a gate runs: `DW_GATE_COMMAND` when set, else the built-in handler `gates`."""
    given = (os.environ if environ is None else environ).get(GATE_ENV, "").strip()
    return shlex.split(given) if given else HANDLERS[gates]


class GateWaiting(Exception):  # not an error: the step waits for a person
    """An interactive gate is waiting for the consultant; `instruction` is what they have to do.

    >>> GateWaiting({"title": "Run table maps", "steps": [], "links": {}, "verify": "Running"}).args[0]
    'waiting for the consultant: Run table maps'
    """

    def __init__(self, instruction: dict[str, Any]) -> None:
        super().__init__(f"waiting for the consultant: {instruction['title']}")
        self.instruction = instruction


class Gates:
    """The gates of one run; `begin(step)` before each step, `shown` after it. `hold`: raise
    `GateWaiting` instead of polling when there is no gate command (interactive runs)."""

    def __init__(self, params: Params, record: RunRecord, say: Callable[[str], None], *,
                 hold: bool = False) -> None:
        self.params = params
        self.record = record
        self.say = say
        self.hold = hold
        self.step: str | None = None
        self.shown: list[dict[str, Any]] = []

    def begin(self, step_id: str) -> None:
        """A step starts: the gates it shows are its own."""
        self.step, self.shown = step_id, []

    def notify(self, instruction: Instruction) -> None:
        """Show and record the instruction, then run the gate command if there is one (or,
        holding, raise `GateWaiting`)."""
        # In the run's language; an English copy stays in it for programs that act on it.
        payload = text.instruction(self.params.language, {
            "title": instruction.title, "steps": list(instruction.steps),
            "links": dict(instruction.links), "verify": instruction.verify})
        self.shown.append(payload)
        command = gate_command(self.params.options.gates)
        if command or not self.hold:
            # Held without a command, the step board's gate panel shows the instruction, with its
            # links and the Verify now button: printed as well, it would be said twice.
            self.say(Instruction(payload["title"], payload["steps"], payload["links"],
                                 payload["verify"]).text())
        if self.step is not None:
            self.record.waiting(self.step, payload)
        if command:
            self._run(command, payload)
        elif self.hold:
            raise GateWaiting(payload)

    def _run(self, command: list[str], instruction: dict[str, Any]) -> None:
        sandbox = self.params.sandbox
        body = json.dumps({"instruction": instruction, "step": self.step, "scenario": self.params.scenario,
                           "run_id": self.record.data["run_id"],
                           "sandbox_dir": str(sandbox.dir) if sandbox else None})
        shown = " ".join(command)
        try:
            done = subprocess.run(program(command), input=body, capture_output=True, text=True,
                                  timeout=self.params.options.gate_timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.say(f"gate command {shown} could not run: {exc}")
            return
        if done.stdout.strip():
            self.say(scrub(done.stdout.strip()))
        if done.returncode != 0:
            self.say(f"gate command {shown} exited {done.returncode}: {scrub(done.stderr.strip()[-500:])}")
