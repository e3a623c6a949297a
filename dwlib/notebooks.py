"""Build the six runbook notebooks from the scenarios (data) and a short narrative per step, and
the review notebook.

The notebooks in `notebooks/` are generated, never edited by hand: a parameters cell (tagged
`parameters` for papermill), the parameter form, a cell that opens the runbook, the sign-in and
the step board (one `dwlib.ui` call each), then per step a Markdown cell (what the step does and
why, with its Microsoft Learn page) and one code cell `rb.run("<step id>")`, and a closing summary.
Step titles and Learn links come from the registered steps, so a notebook and the results it
shows never disagree. A test checks the committed notebooks equal this output.

`notebooks/review.ipynb` (built by `build_review`) is parameterized by a runs directory: the
catalogue, one run drilled into, charts and the integrity of every record (`dwlib.review`).

Regenerate after changing a scenario, a step's title or link, or the text below:

    python -m dwlib.notebooks            # writes notebooks/<scenario>.ipynb and review.ipynb
    python -m dwlib.notebooks --check    # exit 1 when a committed notebook differs

Example:
    >>> nb = build("new-new")
    >>> [c.source for c in nb.cells if c.source.startswith("rb.run(")][:2]
    ['rb.run("preflight")', 'rb.run("power-platform-integration")']
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from dwlib.params import Params
from dwlib.scenarios import SCENARIOS, StepRef, scenario
from dwlib.steps import STEPS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

INTRO = {
    "new-new": (
        "Finance and operations is new and empty, and so is Dataverse. Lifecycle Services provisions "
        "the environments, links them, connects the DAT company and starts the table maps for live "
        "sync. The runbook does not take that on trust: it checks each of those results through the "
        "documented APIs and ends with a live round trip between the two sides."
    ),
    "new-existing": (
        "Finance and operations is new and empty; Dataverse already holds customer data. After the "
        "link, that data needs a company of its own: the runbook creates it in finance and operations, "
        "adds it to the dual-write connection, stamps the existing Dataverse rows with its code "
        "(bootstrap) and runs the initial sync, so the Dataverse data reaches finance and operations."
    ),
    "new-data-new": (
        "Finance and operations is new but already holds data; Dataverse is new. The link is set up as "
        "for two new environments, then the finance and operations data is copied to Dataverse by the "
        "initial sync, or migrated around it where the volumes exceed what the initial sync supports."
    ),
    "new-data-existing": (
        "Both sides hold data. The finance and operations data is planned first; then the existing "
        "Dataverse data gets a company of its own (created, added to the connection, bootstrapped) "
        "before any map goes live, the plan is made again with that company's volume, and one initial "
        "sync moves both ways, per legal entity."
    ),
    "existing-new": (
        "An existing finance and operations environment is connected to a new Dataverse environment. "
        "The connection is set up from finance and operations and covers every legal entity, so keep "
        "only the companies you need (at most 40 for an initial sync); the initial sync then copies "
        "their data to Dataverse."
    ),
    "existing-existing": (
        "Both environments exist and hold data. After the link, the existing Dataverse rows get their "
        "company (bootstrap, by account number or owning business unit: simulate, then apply), the plan "
        "chooses per table "
        "map between the initial sync and a migration around it, the maps are enabled, the initial "
        "sync runs, and both sides are reconciled."
    ),
}

# What each step does and why, in our words; keyed by step id where one step serves twice.
NARRATIVE = {
    "preflight": (
        "Before anything changes, look at both environments from the outside, as the dual-write "
        "health check would: both reachable and signed in, the same Microsoft Entra tenant, the "
        "dual-write core and application solutions at the versions the table maps need, the "
        "application users present, `cdm_company` rows without duplicates or blank names, and no more "
        "legal entities than the limits allow (40 for an initial sync, 250 for live sync). Every line "
        "shows what was seen and, when something is off, the documented fix. This step only reads."
    ),
    "power-platform-integration": (
        "Dual-write rides on the Power Platform integration that links the finance and operations "
        "environment to its Dataverse environment in Lifecycle Services. That is a portal action with "
        "no public API, so this step is a gate: it shows what to do in LCS and then confirms the link "
        "through Dataverse's documented `RetrieveFinanceAndOperationsIntegrationDetails`. Run "
        "headless, it waits for that confirmation up to `options.gate_timeout_s` and then says what is "
        "still missing."
    ),
    "legal-entities": (
        "Linking creates no company in Dataverse: the Legal entities (cdm_companies) table map brings "
        "them. This step runs that map (and the reference maps the bootstrap reads) with its initial "
        "sync, then reads the legal entities of the dual-write connection and makes them those of "
        "`legal_entities`. Verified: the connection's legal entities and one `cdm_company` row per "
        "company, with its owner team."
    ),
    "create-company": (
        "The existing Dataverse data needs a company of its own in finance and operations. This step "
        "creates the legal entities listed in `companies` that do not exist yet, with the customer "
        "groups each needs (`customer_groups`: a new company has none, and a customer cannot be saved "
        "without one). Creating a company cannot be undone, so it asks for confirmation (headless: "
        "`options.confirm_irreversible`)."
    ),
    "add-company": (
        "Add the new company to the dual-write connection (dual-write workspace, Environment details, "
        "Legal entities), with or without initial writes as the data allows; the result says which and "
        "why. It is done when the connection lists it and Dataverse shows its `cdm_company` row, which "
        "the bootstrap needs next."
    ),
    "map-defaults": (
        "An explicit option, not part of the documented path: give a table map a Default value for a "
        "column (`table_maps[].defaults`), used when the Dataverse value is empty. A map must be "
        "stopped to be edited: a running map is stopped, edited and run again without initial sync."
    ),
    "stop-maps": (
        "The company data goes in before dual-write is enabled. Table maps over the tables to stamp "
        "that already run (the LCS setup starts them for a new finance and operations environment) "
        "are stopped first, so no stamped row goes to finance and operations on its own; the plan "
        "decides next how each map's data moves."
    ),
    "bootstrap-simulate": (
        "Rows created in Dataverse before dual-write have no company, and dual-write ignores rows "
        "without one. `bootstrap.method` chooses the documented method: by account number (a row that "
        "is also a finance and operations customer takes that customer's company, so no duplicate is "
        "made), or by owning business unit (`bootstrap.mapping`), as in Microsoft's bootstrap sample. "
        "This first pass only simulates: it writes a CSV of every change it would make with the rule "
        "that matched, and reports rows no rule maps, without writing anything."
    ),
    "bootstrap-apply": (
        "Now write the company lookup on the rows that need it, in bulk (batches of up to 1,000), "
        "leaving rows that are already right alone, and keep an evidence CSV with each row's previous "
        "value. Running it again changes nothing. The change cannot be undone, so it asks for "
        "confirmation (headless: `options.confirm_irreversible`)."
    ),
    "plan": (
        "Count the rows of every table map per legal entity on both sides and apply the decision rules "
        "of the initial-sync guidance: at most 500,000 rows per legal entity per run, 70,000 for "
        "single-threaded maps going into finance and operations, 40 legal entities, the lookup limit, "
        "and the dependencies between maps. The plan table says for each map, in dependency order: "
        "initial sync, migrate around it and skip it, or nothing to do, with the reason and an "
        "estimated duration."
    ),
    "migrate": (
        "Where the plan says the volumes are too large for the initial sync, move the data the "
        "documented other way while the maps do not run: a data management export package from "
        "finance and operations into Dataverse in bulk (or the reverse), so the maps can then be "
        "enabled without an initial sync. A map that already runs and has rows to move is stopped "
        "first (a gate in the dual-write workspace) and left stopped for the next step. When the plan "
        "sends nothing this way, there is nothing to do."
    ),
    "table-maps": (
        "Enable the table maps in dependency order, the way the Customers V3—Contacts example does: "
        "its prerequisites (legal entities, currencies, payment terms, customer groups) first, each "
        "with the master for the initial sync and the skip-initial-sync choice the plan made. Running "
        "maps is a gate in the dual-write workspace (or, when opted in, the unsupported gateway)."
    ),
    "initial-sync": (
        "Follow the initial sync of every map to its end. When it fails, the top errors are shown "
        "with the remediation the documentation gives for them, so they can be fixed and the sync run "
        "again."
    ),
    "plan-new-company": (
        "Plan again now that the new company holds the bootstrapped Dataverse rows: its volume meets "
        "the same limits (500,000 rows per legal entity, 70,000 into finance and operations for "
        "single-threaded maps) before its initial sync."
    ),
    "verify": (
        "Reconcile both sides: row counts and keys per company per table map. Then prove live sync "
        "works with a round trip: a customer created in finance and operations appears in Dataverse, "
        "a change made there comes back, and the test rows are removed afterwards."
    ),
}


_METADATA = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
             "language_info": {"name": "python"}}


def _md(cell_id: str, text: str) -> NotebookNode:
    return nbformat.v4.new_markdown_cell(text, id=cell_id)


def _code(cell_id: str, source: str, tags: Sequence[str] = ()) -> NotebookNode:
    cell = nbformat.v4.new_code_cell(source, id=cell_id)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def _parameters() -> str:
    keys = "\n".join(f"{k} = None" for k in Params.model_fields)
    return (
        "# Parameters (papermill and `dw run` replace them). Either name a parameters file ...\n"
        "params_file = None  # e.g. \"params/sandbox-existing-existing.yaml\" (see params/template.yaml)\n"
        "overrides = {}  # dotted keys over it, e.g. {\"options.dry_run\": True}\n"
        "record_path = None  # the run record; None: runs/<UTC time>-<scenario>-<id>.json\n"
        "interactive = None  # None: JupyterLab is interactive; papermill and dw run are not\n"
        "run_id = None  # None: a new one\n"
        "# ... or let `papermill -f FILE` set the keys of the file itself:\n"
        f"{keys}"
    )


def _step_cells(number: int, ref: StepRef) -> list[NotebookNode]:
    step = STEPS.get(ref.step)
    if step is None:
        raise KeyError(f"step {ref.step!r} is not registered in dwlib.steps: implement it before "
                       "building the notebooks")
    text = NARRATIVE.get(ref.id) or NARRATIVE[ref.step]
    about = f"## {number}. {step.title}\n\n{text}\n\nMicrosoft Learn: [{step.title}]({step.doc_url})"
    return [_md(f"about-{ref.id}", about), _code(f"run-{ref.id}", f'rb.run("{ref.id}")')]


def build(scenario_id: str) -> NotebookNode:
    """The notebook of one scenario (see the module docstring for its shape)."""
    sc = scenario(scenario_id)
    steps = "\n".join(f"{i}. `{ref.id}`" for i, ref in enumerate(sc.steps, 1))
    intro = (
        f"# {sc.title}\n\n{INTRO[sc.id]}\n\n"
        f"This runbook follows the scenario `{sc.id}` of Microsoft's [Guidance for dual-write setup]"
        f"({sc.doc_url}). Each step first checks the real state and changes only what is missing, so "
        "running the notebook again is safe: finished steps report *already done*.\n\n"
        "**Run it** in JupyterLab: set `params_file` below (copy `params/template.yaml`), or load and "
        "edit a parameters file in the form, then run the cells in order. Headless: "
        f"`dw run {sc.id} -f PARAMS.yaml`, or `papermill notebooks/{sc.id}.ipynb OUT.ipynb -f PARAMS.yaml`. "
        f"Against the local sandbox: `dw sandbox start --profile {sc.id}` and "
        f"`params/sandbox-{sc.id}.yaml` (or `dw run {sc.id} -f params/sandbox-{sc.id}.yaml --sandbox`).\n\n"
        f"Steps:\n\n{steps}"
    )
    cells = [
        _md("intro", intro),
        _code("parameters", _parameters(), tags=["parameters"]),
        _md("about-form", "The parameters as a form: load a parameters file, change what this run "
                          "needs and see every problem as you type (the same checks as a headless run). "
                          "Secrets are references only (`env:`, `keyring:`, `file:`). **Save** writes the "
                          "file and uses it below. Headless, this cell only reports the parameters."),
        _code("form", f'from dwlib import ui\n\nform = ui.parameter_form(globals(), '
                      f'scenario="{sc.id}")\nform'),
        _md("about-open", "Validate the parameters (every problem at once, before any call), connect "
                          "to both environments and start the run record."),
        _code("open", f'from dwlib.runbook import Runbook\n\nrb = Runbook.from_notebook(globals(), '
                      f'scenario="{sc.id}")\nrb'),
        _md("about-connect", "Sign in and see who you are on each environment. With `auth.method: "
                             "device_code` the code and the link to enter it appear here; the cell "
                             "waits until you have signed in."),
        _code("connect", "connection = ui.connect(rb)"),
        _md("about-board", "Every step of this runbook, live: status, time and result as each cell "
                           "below runs. A portal action shows its instructions under its step with a "
                           "**Verify now** button: do what it says, then press it."),
        _code("board", "board = ui.step_board(rb)\nboard"),
    ]
    for number, ref in enumerate(sc.steps, 1):
        cells += _step_cells(number, ref)
    cells += [_md("about-summary", "## Summary\n\nEvery step of this run, as the run record keeps it."),
              _code("summary", "rb.summary()")]
    return nbformat.v4.new_notebook(cells=cells, metadata=_METADATA)


REVIEW = "review"


def build_review() -> NotebookNode:
    """The review notebook: catalogue, drill-down, charts and integrity of the runs in `runs_dir`."""
    cells = [
        _md("intro", "# Review of dual-write runs\n\nEvery runbook run leaves a run record (JSON) beside its "
                     "executed notebook: what was run, against which environments, with which parameters, "
                     "what each step found and changed, and hashes of everything it wrote. This notebook "
                     "reads those records, never the environments. The same views are on the command "
                     "line: `dw review DIR`, `dw review show RUN`, `dw review compare A B`, "
                     "`dw review verify DIR`."),
        _code("parameters", '# Parameters (papermill replaces them)\nruns_dir = "runs"  # where the runs '
                            'were written (dw run --out)\nrun = None  # the run to drill into: run id (a '
                            'prefix will do), record or notebook path; None: the latest',
              tags=["parameters"]),
        _md("about-catalogue", "## The runs\n\nOne row per run, oldest first: status, scenario, how long it "
                               "took, the Dataverse environment, how many steps are done and, for a run that "
                               "stopped, the step and its error."),
        _code("catalogue", "from pathlib import Path\n\nfrom IPython.display import HTML\n\n"
                           "from dwlib import report, review\n\nrows = review.catalogue(Path(runs_dir))\n"
                           "review.catalogue_frame(rows)"),
        _md("about-run", "## One run\n\nThe summary a reviewer reads first: who ran what against which "
                         "environments, every step's status, and what stopped the run with its fix."),
        _code("run", "chosen = review.find_run(run or rows[-1][\"record\"], Path(runs_dir))\n"
                     "HTML(report.summary_html(chosen))"),
        _md("about-durations", "Where the time went, step by step."),
        _code("durations", "report.chart_step_durations(chosen)"),
        _md("about-rows", "Rows per company per table map on both sides, from the run's last reconciliation: "
                          "bars of unequal length are rows that did not make it across."),
        _code("rows", "report.chart_rows_per_company(chosen)"),
        _md("about-throttling", "Time spent waiting on retries: throttling (429 with Retry-After) and "
                                "transient server errors. Long waits mean the environments were busy; the "
                                "run still finished with nothing lost."),
        _code("throttling", "report.chart_throttling(chosen)"),
        _md("about-steps", "Every step in full: checks, tables, counts, evidence and remediation."),
        _code("steps", "print(review.show_text(chosen))"),
        _md("about-verify", "## Integrity\n\nEach record's own digest, its evidence files, its notebook and "
                            "report, recomputed now: CHANGED means something was edited after the run."),
        _code("verify", "report.verification_frame(review.verify(Path(runs_dir)))"),
    ]
    return nbformat.v4.new_notebook(cells=cells, metadata=_METADATA)


def render(name: str) -> str:
    """The notebook `name` (a scenario id, or `review`) as the text committed in `notebooks/`."""
    return nbformat.writes(build_review() if name == REVIEW else build(name)) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with `--check`, compare) every notebook; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dwlib.notebooks", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report notebooks that differ, write nothing")
    parser.add_argument("--dir", type=Path, default=NOTEBOOKS, help=f"where the notebooks are ({NOTEBOOKS})")
    args = parser.parse_args(argv)
    stale = []
    for name in [*SCENARIOS, REVIEW]:
        path = args.dir / f"{name}.ipynb"
        text = render(name)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'differs' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
