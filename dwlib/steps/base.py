"""The step contract: what every runbook step receives, does and returns.

A step converges: `check` reads the real state and says what is missing, `act` changes only
that (never in a dry run), `verify` reads the state again and reports. `Step.execute` is the one
template all steps share, so "already done", dry runs and confirmation of irreversible actions
behave the same everywhere. The runbook (`dwlib.runbook`) adds timing, the HTTP calls made and
remediation for failures; steps only talk to the environments through `StepContext`.

Example:
    >>> class Hello(Step):
    ...     name = "hello"
    ...     title = "Say hello"
    ...     doc_url = "https://learn.microsoft.com/"
    ...     def check(self, ctx):
    ...         return Finding(done=False, summary="greet once")
    ...     def act(self, ctx, finding):
    ...         ctx.run_state["greeted"] = True
    ...     def verify(self, ctx, finding):
    ...         ok = ctx.run_state.get("greeted", False)
    ...         return self.result(StepStatus.PASSED if ok else StepStatus.FAILED, "greeted")
    >>> Hello().execute(StepContext.bare()).status
    <StepStatus.PASSED: 'passed'>
"""

from __future__ import annotations

import csv
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dwlib.errors import DwError
from dwlib.render import language_of, result_bundle, result_text
from dwlib.vocab import StepStatus

if TYPE_CHECKING:
    from dwlib.clients.dualwrite import DualWriteAdmin
    from dwlib.clients.session import Session
    from dwlib.params import Params


UNDONE = "This cannot be undone."


class StepError(DwError):
    """A step cannot finish; the message says what is missing and how to fix it."""


@dataclass
class Check:
    """One line of evidence inside a step: what was checked, what was seen, the documented fix."""

    name: str
    status: StepStatus
    evidence: str
    fix: str = ""
    doc: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": str(self.status), "evidence": self.evidence,
                "fix": self.fix, "doc": self.doc}


@dataclass
class Finding:
    """What `check` found: whether the work is already done, and what `act` has to do."""

    done: bool
    summary: str
    todo: Any = None  # step-specific: rows to change, companies to create, maps to run …
    checks: list[Check] = field(default_factory=list)


@dataclass
class StepResult:
    """What a step reports; the runbook fills in timing, calls and remediation."""

    step: str
    title: str
    status: StepStatus
    summary: str
    checks: list[Check] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # e.g. the plan
    counts: dict[str, int] = field(default_factory=dict)  # e.g. rows changed
    evidence_files: list[str] = field(default_factory=list)
    next_action: str = ""  # what the consultant does next, when anything
    doc_url: str = ""
    started: str = ""
    duration_s: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)
    calls_summary: dict[str, Any] | None = None  # every call summed up when `calls` keeps only some
    remediation: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    id: str = ""  # the step's id in its scenario (e.g. initial-sync-new-company); default: `step`
    # The run record's header when the result was recorded (set by the runbook; not part of the
    # result itself): the notebook output carries it so the notebook alone says which run it was.
    run: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the run record stores this)."""
        return {
            "id": self.id or self.step, "step": self.step, "title": self.title, "status": str(self.status),
            "summary": self.summary, "checks": [c.to_dict() for c in self.checks],
            "tables": self.tables, "counts": self.counts, "evidence_files": self.evidence_files,
            "next_action": self.next_action, "doc_url": self.doc_url, "started": self.started,
            "duration_s": self.duration_s, "calls": self.calls, "remediation": self.remediation,
            "error": self.error, **({"calls_summary": self.calls_summary} if self.calls_summary else {}),
        }

    def __str__(self) -> str:
        """The text form headless logs show (`dwlib.render.result_text`)."""
        return result_text(self.to_dict(), language_of(self.run))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))  # IPython's text/plain: the readable form, not the dataclass repr

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Text, HTML and the result as JSON (`dwlib.render.RESULT_MIME`) for the notebook's output."""
        return result_bundle(self.to_dict(), self.run)


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


ProgressFactory = Callable[[str, int | None], Progress]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


def no_progress(label: str, total: int | None) -> Progress:
    """A progress factory that shows nothing (tests, library use)."""
    return _NoProgress()


@dataclass
class StepContext:
    """Everything a step may use: parameters, connected clients, the dual-write admin, I/O."""

    params: Params | None
    session: Session | None
    admin: DualWriteAdmin | None
    evidence_dir: Path
    dry_run: bool = False
    interactive: bool = False
    confirm: Callable[[str], bool] = lambda _what: False
    progress: ProgressFactory = no_progress
    say: Callable[[str], None] = lambda _text: None  # instructions/notes shown to the consultant
    run_state: dict[str, Any] = field(default_factory=dict)  # results earlier steps handed on

    @classmethod
    def bare(cls, evidence_dir: Path | None = None) -> StepContext:
        """A context with no environments (doctests and pure unit tests)."""
        import tempfile

        return cls(params=None, session=None, admin=None,
                   evidence_dir=evidence_dir or Path(tempfile.mkdtemp(prefix="dw-evidence-")))

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]], columns: list[str]) -> Path:
        """Write an evidence CSV (`name` like `bootstrap-plan.csv`) and return its path."""
        self.evidence_dir.mkdir(parents=True, exist_ok=True)
        path = self.evidence_dir / name
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        return path


class Step(ABC):
    """Base of every step: subclasses implement check → act → verify."""

    name: ClassVar[str]
    title: ClassVar[str]
    doc_url: ClassVar[str]
    irreversible: ClassVar[bool] = False
    # A step that only reads (preflight, plan): it runs fully in a dry run too, never acts, and
    # reports what it found rather than "already done".
    read_only: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def check(self, ctx: StepContext) -> Finding:
        """Read the real state; say whether the work is done and what is missing."""

    @abstractmethod
    def act(self, ctx: StepContext, finding: Finding) -> None:
        """Change only what `finding` says is missing (never called in a dry run)."""

    @abstractmethod
    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        """Read the state again and report (status PASSED when the work is in place)."""

    def result(self, status: StepStatus, summary: str, **fields: Any) -> StepResult:
        """A StepResult of this step."""
        return StepResult(step=self.name, title=self.title, status=status, summary=summary,
                          doc_url=self.doc_url, **fields)

    def execute(self, ctx: StepContext) -> StepResult:
        """Check, act on what is missing (unless dry run or unconfirmed or read-only), verify."""
        finding = self.check(ctx)
        if self.read_only:
            return self.verify(ctx, finding)
        if finding.done:
            res = self.verify(ctx, finding)
            if res.status == StepStatus.PASSED:
                res.status = StepStatus.ALREADY_DONE
            return res
        if ctx.dry_run:
            return self.result(StepStatus.SKIPPED, f"dry run — would: {finding.summary}",
                               checks=finding.checks)
        why = self.confirmation(ctx, finding)
        if why and not ctx.confirm(finding.summary):
            how = ("Read what it will do above, then press Confirm." if ctx.interactive else
                   "Confirm headless with options.confirm_irreversible: true "
                   "(dw run -p options.confirm_irreversible=true).")
            return self.result(StepStatus.WAITING, f"needs confirmation: {finding.summary}",
                               checks=finding.checks, next_action=f"{why} {how}")
        self.act(ctx, finding)
        return self.verify(ctx, finding)

    def confirmation(self, ctx: StepContext, finding: Finding) -> str:
        """Why a person must confirm what `finding` says `act` will do ("" when nobody need): by
        default, that an irreversible step cannot be undone. The answer comes from the one
        confirmation of the run (the Confirm button, `rb.run(…, confirm=True)`, headless
        `options.confirm_irreversible`); a step whose acts need it only sometimes overrides this."""
        return UNDONE if self.irreversible else ""


STEPS: dict[str, type[Step]] = {}


def register(cls: type[Step]) -> type[Step]:
    """Class decorator: make a step available to scenarios by its `name`."""
    if cls.name in STEPS:
        raise ValueError(f"step name {cls.name!r} registered twice")
    STEPS[cls.name] = cls
    return cls


# Helpers every step family shares.

def environment(ctx: StepContext) -> tuple[Params, Session, DualWriteAdmin]:
    """The parameters, clients and dual-write admin a step needs (StepError if the context lacks them)."""
    if ctx.params is None or ctx.session is None or ctx.admin is None:
        raise StepError("this step needs parameters, connected environments and a dual-write admin: "
                        "run it through a Runbook (dwlib.runbook) or build a full StepContext")
    return ctx.params, ctx.session, ctx.admin


def worst(checks: Iterable[Check]) -> StepStatus:
    """FAILED if any check failed, WARNING if any warned, else PASSED."""
    found = {c.status for c in checks}
    for status in (StepStatus.FAILED, StepStatus.WARNING):
        if status in found:
            return status
    return StepStatus.PASSED
