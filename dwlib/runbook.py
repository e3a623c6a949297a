"""The runbook engine: open a run from parameters, run a scenario's steps one by one, keep the record.

A notebook (or a script) opens a `Runbook` and calls `rb.run("<step id>")` once per step of its
scenario (`dwlib.scenarios`). Each call runs the registered step (check → act → verify, see
`dwlib.steps.base`), adds timing, the HTTP calls it made and remediation for known errors, writes
the run record (`dwlib.record`) and returns the `StepResult`, which shows itself as a table in
Jupyter and as text in headless logs. A step that fails (or waits for a person) stops the run:
headless, `run` raises `RunStopped` after recording it, so papermill marks the cell failed;
interactively, later steps refuse to run until it is fixed (or `force=True`).

Portal-only actions are gates (`dwlib.clients.dualwrite.PortalAdmin`): the instructions are shown
and recorded, the gate command is run if there is one (`dwlib.gates`), and the documented reads are
polled for up to `options.gate_timeout_s`.

Example:
    rb = Runbook.open("params/sandbox-existing-existing.yaml", {"options.dry_run": True})
    rb.run("preflight")          # a StepResult: checks, evidence, next action
    rb.summary()                 # every step so far, as the HTML report shows them
    >>> is_interactive() in (True, False)
    True
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any

from dwlib import catalog
from dwlib.clients import Session, connect
from dwlib.clients.dualwrite import DualWriteAdmin, open_admin
from dwlib.errors import DwError
from dwlib.gates import Gates, GateWaiting
from dwlib.params import Params, ParamsError, load_params, notebook_parameters, scenario_problem
from dwlib.record import (
    RunRecord,
    bounded_calls,
    default_record_path,
    evidence_dir,
    http_summary,
    new_run_id,
    utc_now,
)
from dwlib.render import TextProgress
from dwlib.report import RunSummary
from dwlib.scenarios import Scenario, StepRef
from dwlib.scenarios import scenario as _scenario
from dwlib.secrets import scrub, scrub_kernel_tracebacks
from dwlib.steps import STEPS, StepContext, StepResult, StepStatus
from dwlib.steps.base import ProgressFactory
from dwlib.text import localize, step_for


class RunbookError(DwError):
    """The runbook cannot do what was asked (unknown step, a blocking failure, …)."""


class RunStopped(RunbookError):
    """Raised headless when a step failed or waits for a person, after it was recorded."""


def is_interactive() -> bool:
    """True in a kernel JupyterLab started (it sets `JPY_SESSION_NAME`); false under papermill or `dw run`."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def _said(status: StepStatus) -> str:
    return status.value.replace("_", " ")


def _say(text: str) -> None:
    print(text, flush=True)


def _display(result: StepResult) -> None:
    from IPython import get_ipython
    from IPython.display import display

    if get_ipython() is not None:  # a kernel: the rich form lands in the notebook
        display(result)
    else:
        _say(str(result))


class Runbook:
    """One run of a scenario: parameters, connected clients, the dual-write admin and the record.

    Build it with `Runbook.open(...)` (or `Runbook.from_notebook(globals(), scenario=...)` in a
    notebook); close it (or use `with`) to release the connections.

    Example:
        with Runbook.open("params/sandbox-new-new.yaml") as rb:
            for step_id in rb.step_ids: rb.run(step_id)
        >>> "run" in dir(Runbook)
        True
    """

    def __init__(self, params: Params, record: RunRecord, *, interactive: bool) -> None:
        self.params = params
        self.record = record
        self.interactive = interactive
        self.scenario: Scenario = _scenario(params.scenario)
        self.results: dict[str, StepResult] = {}
        self.run_state: dict[str, Any] = {}
        # Steps whose last run waits for a confirmation the consultant can give with a button
        # (`dwlib.ui.confirm` listens for them).
        self.awaiting_confirmation: set[str] = set()
        # dwlib.ui plugs in here: who hears of each step starting (result None) and ending, how
        # progress shows, where the device-code sign-in message goes.
        self.listeners: list[Callable[[str, StepResult | None], None]] = []
        self.progress: ProgressFactory = TextProgress
        self.device_prompt: Callable[[str], None] = _say
        self._blocked: str | None = None
        # dwlib.ui sets gates.hold interactively: a gate then waits for its "Verify now" button.
        self.gates = Gates(params, record, _say)
        self._observed = False
        self.session: Session | None = None
        self.admin: DualWriteAdmin | None = None

    # ---- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        source: str | Path | Mapping[str, Any] | Params,
        overrides: Mapping[str, Any] | None = None,
        *,
        record_path: str | Path | None = None,
        interactive: bool | None = None,
        scenario: str | None = None,
        run_id: str | None = None,
    ) -> Runbook:
        """Validate the parameters (a `ParamsError` before any call), start the record, connect.

        `source` is a parameters file, a mapping of its keys, or `Params`; `overrides` are dotted
        keys over it. `record_path` None → `runs/<UTC time>-<scenario>-<id>.json` under the
        current directory; evidence goes to `<record stem>-evidence/`. `interactive` None →
        `is_interactive()`. `scenario`, when given, must be the parameters' scenario (a notebook
        passes its own). `run_id` None → a new one (`dw run` names its files after it).
        """
        params = cls._params(source, overrides, scenario)
        interactive = is_interactive() if interactive is None else interactive
        run_id = run_id or new_run_id()
        path = Path(record_path) if record_path else default_record_path(params.scenario, run_id)
        env = params.environments
        record = RunRecord.create(
            path.resolve(), run_id=run_id, scenario=params.scenario,
            steps=_scenario(params.scenario).step_ids(),
            parameters=params.model_dump(mode="json"),
            environments={"tenant_id": env.tenant_id, "authority": env.authority_url,
                          "dataverse_url": env.dataverse_url, "finops_url": env.finops_url,
                          "gateway_url": env.gateway_url,
                          "sandbox_dir": str(params.sandbox.dir) if params.sandbox else None},
            dry_run=params.dry_run, interactive=interactive,
        )
        rb = cls(params, record, interactive=interactive)
        try:
            rb._connect()
        except BaseException as exc:
            record.fail(f"cannot connect: {scrub(str(exc))}")
            rb.close()
            raise
        return rb

    @classmethod
    def from_notebook(cls, namespace: Mapping[str, Any], *, scenario: str) -> Runbook:
        """Open from a notebook's parameters: `params_file` (what `dw run` sets), or the keys of a
        parameters file as papermill's `-f FILE` injects them (`scenario`, `environments`, …);
        plus `overrides`, `record_path`, `interactive` and `run_id`.

        >>> Runbook.from_notebook({"params_file": None}, scenario="new-new")
        Traceback (most recent call last):
        ...
        dwlib.params.load.ParamsError: invalid parameters (1 problem):
          params_file: no parameters: set params_file to a parameters file (see params/template.yaml), \
or run with `papermill -f FILE` or `dw run`
        """
        scrub_kernel_tracebacks()
        params_file, inline = notebook_parameters(namespace)
        if params_file and inline:
            raise ParamsError([("params_file", "give the parameters either as params_file or as the keys "
                                               "of a parameters file (papermill -f), not both: "
                                               + ", ".join(inline))])
        if not params_file and not inline:
            raise ParamsError([("params_file", "no parameters: set params_file to a parameters file (see "
                                               "params/template.yaml), or run with `papermill -f FILE` or "
                                               "`dw run`")])
        return cls.open(params_file or inline, namespace.get("overrides") or None,
                        record_path=namespace.get("record_path"), interactive=namespace.get("interactive"),
                        scenario=scenario, run_id=namespace.get("run_id"))

    @staticmethod
    def _params(source: str | Path | Mapping[str, Any] | Params, overrides: Mapping[str, Any] | None,
                scenario: str | None) -> Params:
        if not isinstance(source, Params):
            return load_params(source, overrides, scenario=scenario)
        if overrides:
            return load_params(source.model_dump(mode="json"), overrides, scenario=scenario)
        problem = scenario_problem(scenario, source.scenario)
        if problem:
            raise ParamsError([("scenario", problem)])
        return source

    def _connect(self) -> None:
        params = self.params
        self.session = connect(params, device_prompt=lambda message: self.device_prompt(message))
        self.admin = open_admin(self.session, params, notify=self.gates.notify)

    # ---- what the notebook uses ------------------------------------------------------------------

    @property
    def step_ids(self) -> list[str]:
        """The scenario's step ids in order (one notebook cell each)."""
        return self.scenario.step_ids()

    @property
    def dry_run(self) -> bool:
        """Whether steps only check and plan (`Params.dry_run`)."""
        return self.params.dry_run

    @property
    def record_path(self) -> Path:
        """Where the run record is written."""
        return self.record.path

    def run(self, step_id: str, *, force: bool = False, confirm: bool | None = None) -> StepResult:
        """Run one step of the scenario and record it; see the module docstring for failures.

        `force` runs it although an earlier step failed; `confirm` answers the confirmation of an
        irreversible action for this call (default: `options.confirm_irreversible`).
        """
        ref = self._ref(step_id)
        if self._blocked and self._blocked != step_id and not force:
            blocked = self.results[self._blocked]
            raise RunbookError(
                f"step {self._blocked} {_said(blocked.status)}: {blocked.summary}. Fix it and re-run the "
                f"runbook (finished steps will report already done), or run "
                f"rb.run({step_id!r}, force=True) to go on anyway")
        answers: list[bool] = []  # confirmations the step asked for, and how they were answered
        ctx = self._context(confirm, answers)
        self.gates.begin(step_id)
        self.record.step_started(step_id)
        self._tell(step_id, None)
        assert self.session is not None
        journal = self.session.journal
        first, clock, started = len(journal), time.monotonic(), utc_now()
        error: BaseException | None = None
        try:
            result = self._execute(ref, ctx)
        except KeyboardInterrupt as exc:
            # Stopped from outside (Ctrl+C, `dw run` given SIGINT/SIGTERM, Interrupt kernel): the
            # record says the run was interrupted in this step, which is not a failure of the step.
            self.record.interrupted("interrupted (KeyboardInterrupt)")
            self._tell(step_id, self._failure(ref, exc, "interrupted: "))
            raise
        except GateWaiting as exc:
            result = self._waiting(ref, exc)
        except Exception as exc:
            result, error = self._failure(ref, exc), exc
        result.id = step_id
        if self.params.language != "en":  # the record and the board speak the run's language
            result.title = step_for(self.params.language, step_id, ref.step).title
            result.doc_url = localize(result.doc_url, self.params.language) if result.doc_url else ""
        result.started = started
        result.duration_s = round(time.monotonic() - clock, 3)
        calls_file = ctx.evidence_dir / "calls" / f"{step_id}.jsonl"
        result.calls, summary = bounded_calls([asdict(e) for e in journal.entries()[first:]], calls_file)
        result.calls_summary = dict(summary) if summary else None
        result.remediation = _remediation(result, error)
        if result.status == StepStatus.WAITING and False in answers and self.interactive:
            result.next_action += f" Or run the cell again as rb.run({step_id!r}, confirm=True)."
            self.awaiting_confirmation.add(step_id)
        else:
            self.awaiting_confirmation.discard(step_id)
        self.results[step_id] = result
        self.record.step_finished(step_id, result.to_dict(), self.gates.shown,
                                  http_summary(journal.as_dicts()))
        result.run = self.record.header()
        self._tell(step_id, result)
        if not result.status.ok:
            self._blocked = step_id
            if not self.interactive:
                _display(result)
                raise RunStopped(
                    f"step {step_id} {_said(result.status)}: {result.summary}. Fix it and "
                    f"re-run the runbook (finished steps will report already done). Run record: "
                    f"{self.record.path}")
            return result
        if self._blocked == step_id:
            self._blocked = None
        self._observe()
        return result

    def summary(self) -> RunSummary:
        """Every step of the run with its status, time, calls and summary: the HTML report's table
        in Jupyter, aligned text elsewhere (`dwlib.report.RunSummary`). Sealing a run finished
        interactively is the Seal button of the notebook's closing cell (`dwlib.ui.summary`)."""
        return RunSummary(self.record.data)

    def close(self) -> None:
        """Release the connections (the record stays as written)."""
        if self.session is not None:
            self.session.close()

    def __enter__(self) -> Runbook:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __str__(self) -> str:
        env = self.params.environments
        return (f"Runbook {self.scenario.id} ({self.scenario.title}), run {self.record.data['run_id']}\n"
                f"  Dataverse {env.dataverse_url}; finance and operations {env.finops_url}\n"
                f"  {'DRY RUN: nothing will be changed' if self.dry_run else 'changes will be made'}; "
                f"{'interactive' if self.interactive else 'headless'}; record {self.record.path}\n"
                f"  steps: {', '.join(self.step_ids)}")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    # ---- inside a step ---------------------------------------------------------------------------

    def _ref(self, step_id: str) -> StepRef:
        for ref in self.scenario.steps:
            if ref.id == step_id:
                return ref
        raise RunbookError(f"{step_id!r} is not a step of {self.scenario.id}: use one of "
                           f"{', '.join(self.step_ids)}")

    def _context(self, confirm: bool | None, answers: list[bool]) -> StepContext:
        def confirmed(what: str) -> bool:
            answer = self.params.options.confirm_irreversible if confirm is None else confirm
            answers.append(answer)
            return answer

        return StepContext(
            params=self.params, session=self.session, admin=self.admin,
            evidence_dir=evidence_dir(self.record.path), dry_run=self.dry_run,
            interactive=self.interactive, confirm=confirmed, progress=self.progress, say=_say,
            run_state=self.run_state,
        )

    def _execute(self, ref: StepRef, ctx: StepContext) -> StepResult:
        step_class = STEPS.get(ref.step)
        if step_class is None:
            return StepResult(step=ref.step, title=ref.step, status=StepStatus.FAILED,
                              summary=f"no step named {ref.step!r} is registered in dwlib.steps",
                              error=f"unknown step {ref.step!r}",
                              next_action="install a dwlib that implements it, or report the bug")
        return step_class(**ref.options).execute(ctx)

    def _tell(self, step_id: str, result: StepResult | None) -> None:
        for listener in self.listeners:
            listener(step_id, result)

    def _waiting(self, ref: StepRef, waiting: GateWaiting) -> StepResult:
        """A gate that waits for the consultant (interactive runs): WAITING, with what to do next."""
        step_class = STEPS.get(ref.step)
        return StepResult(
            step=ref.step, title=step_class.title if step_class else ref.step, status=StepStatus.WAITING,
            summary=f"waiting for you: {waiting.instruction['title']}",
            doc_url=step_class.doc_url if step_class else "",
            next_action="Do what the instruction above says, then press Verify now (or run this cell "
                        "again): the step checks first and goes on once it sees the work done.",
        )

    def _failure(self, ref: StepRef, exc: BaseException, prefix: str = "") -> StepResult:
        """A step that raised: FAILED with the exception's type and message (never its traceback)."""
        step_class = STEPS.get(ref.step)
        message = scrub(f"{type(exc).__name__}: {exc}".strip().removesuffix(":"))
        return StepResult(
            step=ref.step, title=step_class.title if step_class else ref.step, status=StepStatus.FAILED,
            summary=prefix + message, error=message,
            doc_url=step_class.doc_url if step_class else "",
            next_action="Fix the cause shown above, then run the runbook again: finished steps will "
                        "report already done.",
        )

    def _observe(self) -> None:
        """Once an environment answered, note who it says it is (organization, tenant) in the record."""
        if self._observed or self.session is None:
            return
        try:
            who = self.session.dataverse.whoami()
            claims = self.session.tokens.claims(self.params.environments.dataverse_url)
        except DwError:
            return  # tried again after the next step; preflight reports reachability itself
        self.record.observe({"organization_id": who.get("OrganizationId"), "user_id": who.get("UserId"),
                             "business_unit_id": who.get("BusinessUnitId"), "tenant_id": claims.get("tid")})
        self._observed = True


def _remediation(result: StepResult, error: BaseException | None) -> list[dict[str, Any]]:
    """The step's own remediation, plus the known-error catalogue's for what went wrong."""
    out = list(result.remediation)
    if result.status in (StepStatus.PASSED, StepStatus.ALREADY_DONE, StepStatus.SKIPPED):
        return out
    fix = getattr(error, "fix", "")
    if fix:
        out.append({"id": "", "meaning": "", "fix": fix, "doc": ""})
    texts = [result.error, result.summary,
             *(c.evidence for c in result.checks if c.status in (StepStatus.FAILED, StepStatus.WARNING))]
    seen = {r.get("id") for r in out}
    for text in texts:
        known = catalog.match_error(text) if text else None
        if known and known.id not in seen:
            seen.add(known.id)
            out.append({"id": known.id, "meaning": known.meaning, "fix": known.fix, "doc": known.doc_url})
    return out
