"""Review runs from what they left behind: the catalogue of a directory, one run step by step, two
runs compared, and integrity verified (`dwlib.report` draws a run's HTML report and charts).

Three modules: `runs` (the catalogue: finding and reading run records), `formats` (tables, JSON,
HTML pages and text), `comparison` (two runs compared; a run verified against its own hashes).
Callers import from `dwlib.review`, which re-exports what they use; `dw review` is its
command-line face.

Example:
    rows = catalogue(Path("runs"))          # one dict per run, newest last
    print(catalogue_text(rows))
    run = find_run("e43c47f1", Path("runs")); print(show_text(run))
    print(comparison_text(compare(find_run("test-run"), find_run("prod-run"))))
    [v for v in verify(Path("runs")) if not v.ok]   # records, notebooks, evidence changed
"""

from .comparison import Verification, compare, verify
from .formats import (
    CSS,
    catalogue_frame,
    catalogue_html,
    catalogue_json,
    catalogue_text,
    comparison_text,
    header_lines,
    page,
    rows_per_company,
    show_text,
    step_durations,
    throttling,
    write_text,
)
from .runs import (
    NOT_RUN,
    ReviewError,
    Run,
    catalogue,
    find_run,
    live_status,
    record_from_notebook,
    steps_in_order,
)

__all__ = [
    "CSS",
    "NOT_RUN",
    "ReviewError",
    "Run",
    "Verification",
    "catalogue",
    "catalogue_frame",
    "catalogue_html",
    "catalogue_json",
    "catalogue_text",
    "compare",
    "comparison_text",
    "find_run",
    "header_lines",
    "live_status",
    "page",
    "record_from_notebook",
    "rows_per_company",
    "show_text",
    "step_durations",
    "steps_in_order",
    "throttling",
    "verify",
    "write_text",
]
