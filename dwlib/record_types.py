"""The shape of a run record (schema version 2) as types: the JSON Schema `record.schema.json`
says the same thing for any reader, these TypedDicts say it to the type checker.

`tests/test_record_types.py` proves the two agree: every property of the schema is a key here with
a compatible type, the required keys are the same, and no key here is missing from the schema.
Like `dwlib.record`, this module imports nothing of `dwlib` but its vocabulary. (No `from
__future__ import annotations` here: TypedDict reads `NotRequired` from evaluated annotations.)

Example:
    >>> sorted(HashedFile.__required_keys__), sorted(HashedFile.__optional_keys__)
    (['path', 'sha256'], ['bytes'])
"""

from typing import Any, Literal, NotRequired, TypedDict

from dwlib.vocab import RunStatus, StepStatus


class HashedFile(TypedDict):
    """A file the record vouches for: its path (relative to the record's directory) and sha256."""

    path: str
    bytes: NotRequired[int]
    sha256: str


class Call(TypedDict):
    """One HTTP call of a step (`dwlib.clients.http.JournalEntry`): no headers, bodies or secrets."""

    started: str
    method: str
    url: str
    status: int | None
    duration_ms: float
    retries: int
    wait_s: float
    retry_reasons: NotRequired[list[str]]
    throttled_wait_s: NotRequired[float]


class CallsSummary(TypedDict):
    """A step's calls summed up when its entry keeps only some of them (`dwlib.record.bounded_calls`):
    every call is in `file` (JSON lines, relative to the record's directory)."""

    calls: int
    kept: int
    failed: int
    retries: int
    throttled_retries: int
    wait_s: float
    throttled_wait_s: float
    file: str


class StepEntry(TypedDict):
    """A step's result as the record keeps it (`StepResult.to_dict()` and the gates it showed)."""

    id: str
    step: str
    title: str
    status: StepStatus
    summary: str
    checks: list[dict[str, Any]]
    tables: dict[str, list[dict[str, Any]]]
    counts: dict[str, float]
    evidence_files: list[str]
    next_action: str
    doc_url: str
    started: str
    duration_s: float
    calls: list[Call]
    calls_summary: NotRequired[CallsSummary]
    remediation: list[dict[str, Any]]
    error: str
    gates: list[dict[str, Any]]


class DwlibIdentity(TypedDict):
    """Which dwlib ran: its version, the Python, the git revision and whether the tree was dirty."""

    version: str | None
    python: str
    git_revision: str | None
    git_dirty: bool | None


class RecordEnvironments(TypedDict):
    """The environments of the run, and the identities they reported."""

    dataverse_url: Any
    finops_url: Any
    observed: dict[str, Any]


class HttpSummary(TypedDict):
    """The run's HTTP calls summed up (`dwlib.record.http_summary`)."""

    calls: int
    failed: int
    retries: int
    throttled_retries: int
    retry_reasons: dict[str, int]
    wait_s: float
    throttled_wait_s: float
    by_endpoint: list[dict[str, Any]]


class Process(TypedDict):
    """The process that ran the runbook."""

    host: str
    pid: int


class RecordManifest(TypedDict):
    """Added once the executed notebook is final (`dwlib.record.seal`)."""

    sealed: str
    notebook: HashedFile | None
    report: HashedFile | None


class Integrity(TypedDict):
    """The digest of every other key of the record (`dwlib.record.content_sha256`)."""

    algorithm: Literal["sha256"]
    sha256: str


class RunRecordData(TypedDict):
    """A whole run record, as written to disk."""

    schema_version: Literal[2]
    run_id: str
    scenario: str
    status: RunStatus
    failed_step: str | None
    error: str | None
    started: str
    ended: str | None
    duration_s: float | None
    dry_run: bool
    interactive: bool
    dwlib: DwlibIdentity
    parameters: dict[str, Any]
    environments: RecordEnvironments
    steps_planned: list[str]
    current_step: str | None
    waiting: dict[str, Any] | None
    steps: list[StepEntry]
    http: HttpSummary
    process: Process
    evidence: list[HashedFile]
    manifest: RecordManifest | None
    integrity: Integrity
