"""`dw batch`: many runbook runs from one plan, on local processes or a Dask cluster.

- `plan`: the plan file, validated with every run's parameters before anything starts;
- `worker`: one run as its own `dw run` process (log, timeout, cancellation, uploads to a URL);
- `executors`: local threads supervising those processes, or tasks on Dask (`dwlib[dask]`);
- `manifest`: `<out>/batch.json`, each run's status, for `--resume`;
- `runner`: scheduling (bounded, one run per environment pair at a time) and the summary.

Example:
    from dwlib.batch import run_batch
    run_batch(Path("params/batch-sandbox.yaml"), "runs/batch", max_parallel=2).exit_code
    >>> from dwlib.batch import load_plan, run_batch
"""

from dwlib.batch.plan import Plan, PlannedRun, load_plan
from dwlib.batch.runner import BatchResult, run_batch, summary

__all__ = ["BatchResult", "Plan", "PlannedRun", "load_plan", "run_batch", "summary"]
