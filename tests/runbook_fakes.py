"""Fake steps for the engine tests, registered under the real step names of the scenarios.

Behaviour comes from the environment, so a papermill kernel (another process) behaves like the
test process: `DW_FAKES` is a JSON object `{step name: behaviour}` (default "pass"), `DW_FAKES_STATE`
a JSON file that remembers which steps did their work (so a second run finds them done).

Behaviours: "pass" (check → act once → verified), "raise" (act raises a `RuntimeError` whose text is
a documented dual-write error), "interrupt" (act is interrupted the first time: KeyboardInterrupt),
"fail" (verify reports FAILED), "irreversible" (like pass, but needs
confirmation), "gate" (act runs the Power Platform integration gate of `ctx.admin`), "observe"
(check reads the run record on disk and remembers the `current_step` it names).

Example:
    install({"plan": "raise"})   # every other step of the scenario passes
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dwlib.scenarios import SCENARIOS
from dwlib.steps import STEPS, Check, Finding, Step, StepContext, StepResult, StepStatus

KNOWN_ERROR = "Error Exceeds the maximum partitions allowed for mapping DWM-1-2"


def _behaviour(name: str) -> str:
    return json.loads(os.environ.get("DW_FAKES", "{}")).get(name, "pass")


def _state_path() -> Path:
    return Path(os.environ["DW_FAKES_STATE"])


def _state() -> dict[str, Any]:
    path = _state_path()
    return json.loads(path.read_text()) if path.is_file() else {"done": [], "seen_current_step": None}


def _save(state: dict[str, Any]) -> None:
    _state_path().write_text(json.dumps(state))


def make_fake(step_name: str) -> type[Step]:
    """A fake step class for `step_name` (its behaviour is read when it runs)."""

    class Fake(Step):
        name = step_name
        title = f"Fake {step_name}"
        doc_url = f"https://learn.microsoft.com/fake/{step_name}"

        @property
        def irreversible(self) -> bool:  # type: ignore[override]
            return _behaviour(self.name) == "irreversible"

        def check(self, ctx: StepContext) -> Finding:
            assert ctx.session is not None
            ctx.session.dataverse.whoami()  # one journal entry per check
            if _behaviour(self.name) == "observe":
                state = _state()
                record = json.loads(Path(os.environ["DW_FAKES_RECORD"]).read_text())
                state["seen_current_step"] = record["current_step"]
                _save(state)
            done = self.name in _state()["done"]
            return Finding(done, "nothing to do" if done else f"do {self.name}")

        def act(self, ctx: StepContext, finding: Finding) -> None:
            behaviour = _behaviour(self.name)
            if behaviour == "raise":
                raise RuntimeError(KNOWN_ERROR)
            if behaviour == "interrupt" and self.name not in _state().get("interrupted", []):
                state = _state()
                state.setdefault("interrupted", []).append(self.name)
                _save(state)
                raise KeyboardInterrupt  # as Jupyter's Interrupt (or dw run given a signal) lands
            if behaviour == "gate":
                assert ctx.admin is not None
                ctx.admin.set_up_power_platform_integration()
            ctx.write_csv(f"{self.name}.csv", [{"step": self.name}], ["step"])
            state = _state()
            state["done"].append(self.name)
            _save(state)

        def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
            if _behaviour(self.name) == "fail":
                missing = Check("thing", StepStatus.FAILED, "the thing is missing", fix="add it")
                return self.result(StepStatus.FAILED, "verification failed", checks=[missing])
            return self.result(StepStatus.PASSED, f"{self.name} done",
                               checks=[Check("thing", StepStatus.PASSED, "present")],
                               tables={"rows": [{"map": "a", "rows": 1}, {"map": "b", "rows": 2}]},
                               counts={"rows": 3})

    Fake.__name__ = f"Fake_{step_name.replace('-', '_')}"
    return Fake


def install(behaviours: Mapping[str, str] | None = None) -> None:
    """Replace every registered step by a fake (used in a papermill kernel: no undo needed)."""
    if behaviours is not None:
        os.environ["DW_FAKES"] = json.dumps(dict(behaviours))
    names = {ref.step for sc in SCENARIOS.values() for ref in sc.steps}
    for name in names:
        STEPS[name] = make_fake(name)


@contextmanager
def installed() -> Iterator[None]:
    """`install()` for the duration of a with block, restoring the real steps afterwards."""
    saved = dict(STEPS)
    install()
    try:
        yield
    finally:
        STEPS.clear()
        STEPS.update(saved)
