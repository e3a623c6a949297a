"""The words every layer shares: statuses of steps, runs and batch runs, and dual-write map states.

This module sits at the very bottom of the package and imports nothing of `dwlib`. The enums are
`StrEnum`s, so a member *is* its string: run records, manifests and JSON outputs hold the same
values they always did, and a value read back from JSON compares equal to its member.

Example:
    >>> StepStatus("already_done").ok, StepStatus.WARNING.done, StepStatus.WAITING.ok
    (True, False, False)
    >>> RunStatus.INTERRUPTED.finished, RunStatus.RUNNING.active
    (True, True)
    >>> MapState.of("NotRunning"), MapState.PAUSED.live
    (<MapState.NOT_RUNNING: 'Not running'>, True)
    >>> "passed" == StepStatus.PASSED
    True
"""

from __future__ import annotations

from enum import StrEnum


class StepStatus(StrEnum):
    """Outcome of a step (and of each check inside it)."""

    PASSED = "passed"
    ALREADY_DONE = "already_done"
    SKIPPED = "skipped"
    WAITING = "waiting"  # a person must act (gate or confirmation) before the step can finish
    WARNING = "warning"
    FAILED = "failed"

    @property
    def ok(self) -> bool:
        """True when the run may go on after this outcome."""
        return self in _STEP_OK

    @property
    def done(self) -> bool:
        """True when the step's work is in place (it passed, or it was already done)."""
        return self in _STEP_DONE


_STEP_OK = frozenset({StepStatus.PASSED, StepStatus.ALREADY_DONE, StepStatus.SKIPPED, StepStatus.WARNING})
_STEP_DONE = frozenset({StepStatus.PASSED, StepStatus.ALREADY_DONE})


class RunStatus(StrEnum):
    """The status of a whole run, as its record states it (`record.schema.json`)."""

    RUNNING = "running"
    PASSED = "passed"
    WARNING = "warning"  # every step ran; some warned or were skipped
    WAITING = "waiting"  # a step waits for a person
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # a signal or a kernel interrupt stopped it

    @property
    def active(self) -> bool:
        """True while the run may still go on by itself, or be resumed in its kernel."""
        return self in (RunStatus.RUNNING, RunStatus.INTERRUPTED)

    @property
    def finished(self) -> bool:
        """True when the run will not go on by itself (anything but `running`)."""
        return self is not RunStatus.RUNNING

    @property
    def succeeded(self) -> bool:
        """True when every planned step ran without failing (`dw run` exits 0)."""
        return self in (RunStatus.PASSED, RunStatus.WARNING)


class Unfinished(StrEnum):
    """Where a step stands before it has a result (a row of the runbook's board)."""

    PENDING = "pending"
    RUNNING = "running"


class BatchStatus(StrEnum):
    """The status of one run of a batch (and of the batch as a whole) in its manifest."""

    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    INVALID = "invalid"  # `dw run` refused its parameters (exit code 2)
    INTERRUPTED = "interrupted"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    ERROR = "error"  # the runner could not start or follow it

    @property
    def failed(self) -> bool:
        """True for every way a run can end without passing."""
        return self not in (BatchStatus.PENDING, BatchStatus.RUNNING, BatchStatus.PASSED)

    @property
    def active(self) -> bool:
        """True while the run waits for its turn or runs."""
        return self in (BatchStatus.PENDING, BatchStatus.RUNNING)


class MapState(StrEnum):
    """A dual-write table map's state, as the dual-write page shows it (enable-entity-map.md)."""

    NOT_RUNNING = "Not running"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    PAUSED = "Paused"
    RESUMING = "Resuming"

    @property
    def live(self) -> bool:
        """True when the map tracks changes (running, paused with a queue, or catching up)."""
        return self in LIVE_MAP_STATES

    @property
    def settling(self) -> bool:
        """True for the states that end by themselves (initial write, catch-up)."""
        return self in SETTLING_MAP_STATES

    @classmethod
    def of(cls, name: str) -> MapState | None:
        """The state a documented name stands for: the page's labels and the names of
        `DWEnums.MapStatus` in Microsoft's Dual-write-automations; None for a name not known."""
        return _MAP_STATE_OF_NAME.get(name)


_MAP_STATE_OF_NAME: dict[str, MapState] = {
    **{s.value: s for s in MapState},
    "NotRunning": MapState.NOT_RUNNING,
    "Stopped": MapState.NOT_RUNNING,
    "InitialSync": MapState.INITIALIZING,
    "CatchUp": MapState.RESUMING,
}
MAP_STATE_NAMES: tuple[str, ...] = tuple(_MAP_STATE_OF_NAME)
# As tuples too, for `in` tests on values that may still be plain strings (read from JSON).
LIVE_MAP_STATES = (MapState.RUNNING, MapState.PAUSED, MapState.RESUMING)
SETTLING_MAP_STATES = (MapState.INITIALIZING, MapState.RESUMING)
