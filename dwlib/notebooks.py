"""Build the runbook notebooks, in English and Dutch, from the scenarios (data) and the narrative
text files of `dwlib/text/<language>/` (see its README), and the review notebook.

The notebooks in `notebooks/` are generated, never edited by hand: a parameters cell (tagged
`parameters` for papermill), the parameter form, a cell that opens the runbook, the sign-in and
the step board (one `dwlib.ui` call each), then per step a Markdown cell (what the step does and
why, with its Microsoft Learn page) and one code cell `rb.run("<step id>")`, and a closing summary.
English step titles and Learn links come from the registered steps, so a notebook and the results
it shows never disagree; another language takes the titles of its text files and links the same
pages in its own locale (`/nl-nl/`). A test checks the committed notebooks equal this output.

Language convention: `notebooks/<scenario>.ipynb` is English, `notebooks/<language>/<scenario>.ipynb`
(`nl`) the same runbook in that language; the parameter `language` (`en` by default) chooses, and
`dw run … --lang nl` sets it.

`notebooks/review.ipynb` (built by `build_review`) is parameterized by a runs directory: the
catalogue, one run drilled into, charts and the integrity of every record (`dwlib.review`).

Regenerate after changing a scenario, a step's title or link, or a text file:

    python -m dwlib.notebooks            # writes notebooks/[nl/]<scenario>.ipynb and review.ipynb
    python -m dwlib.notebooks --check    # exit 1 when a committed notebook differs

Example:
    >>> nb = build("new-new")
    >>> [c.source for c in nb.cells if c.source.startswith("rb.run(")][:2]
    ['rb.run("preflight")', 'rb.run("power-platform-integration")']
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from dwlib import text
from dwlib.params import Params
from dwlib.scenarios import SCENARIOS, Scenario, StepRef, scenario
from dwlib.steps import STEPS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

LEARN = text.learn_url("en", "dw/x").removesuffix("data-entities/dual-write/x")
DW, PP = LEARN + "data-entities/dual-write/", LEARN + "power-platform/"
# The bootstrap FAQ (owning business unit → company, FastTrack's sample) as the Dutch edition of the
# page the guidance links still carries it; the English page now describes the other method.
BOOTSTRAP_FAQ = text.learn_url("en", "nl-faq/bootstrap-company-data")
GUIDANCE, LCS, ENABLE_EXISTING = DW + "connection-setup", DW + "lcs-setup", DW + "enable-dual-write"
PP_NEW = PP + "environment-lifecycle-connect-finops-new-dv"
PP_EXISTING = PP + "environment-lifecycle-connect-finops-existing-dv"


def page_title(url: str) -> str:
    """The title of the Learn page `url` links (in the page's own language; an anchor or no locale
    will do), from `dwlib/text/<language>/pages.yaml`.

    >>> page_title("https://learn.microsoft.com/dynamics365/fin-ops-core/dev-itpro/data-entities/"
    ...            "dual-write/connection-setup#new-existing")
    'Guidance for dual-write setup'
    """
    return text.title(url)


def link(url: str) -> str:
    """A Markdown link to a Learn page whose text is the page's title."""
    return f"[{page_title(url)}]({url})"


def _facts(sc: Scenario) -> dict[str, str]:
    """What a text's variants (`parts`) choose by: `finops=existing`, `dataverse=new`, …"""
    return {"finops": sc.finops, "dataverse": sc.dataverse, "scenario": sc.id, "kind": sc.kind}


def _shared(language: str, key: str, sc: Scenario | None = None, **values: str) -> str:
    """A text of `<language>/notebook.yaml`, its placeholders filled."""
    shared = text.data(language, "notebook")
    return text.expand(text.unwrap(str(shared[key])), language, parts=shared.get("parts"),
                       facts=_facts(sc) if sc else {}, values=values,
                       where=f"dwlib/text/{language}/notebook.yaml {key}")


def text_name(ref: StepRef, language: str = "en") -> str:
    """The text file of step `ref`: its step id's own where it has one, else its step's.

    >>> text_name(scenario("new-data-existing").steps[9])
    'plan-new-company'
    """
    return text.step_for(language, ref.id, ref.step).name


def narrative(sc: Scenario, ref: StepRef, language: str = "en") -> str:
    """What step `ref` of scenario `sc` does and why (the Markdown above its cell, without the title).

    >>> narrative(scenario("new-new"), scenario("new-new").steps[0]).startswith("Before anything changes")
    True
    """
    found = text.step(language, text_name(ref, language))
    return text.expand(found.body, language, parts=found.meta.get("parts"), facts=_facts(sc),
                       where=f"dwlib/text/{language}/steps/{found.name}.md")


_METADATA = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
             "language_info": {"name": "python"}}


def _md(cell_id: str, source: str) -> NotebookNode:
    cell: NotebookNode = nbformat.v4.new_markdown_cell(source, id=cell_id)
    return cell


def _code(cell_id: str, source: str, tags: Sequence[str] = ()) -> NotebookNode:
    cell: NotebookNode = nbformat.v4.new_code_cell(source, id=cell_id)
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


def step_title(ref: StepRef, language: str = "en") -> str:
    """The title of step `ref` in `language` (English: the registered step's own)."""
    step = STEPS.get(ref.step)
    if step is None:
        raise KeyError(f"step {ref.step!r} is not registered in dwlib.steps: implement it before "
                       "building the notebooks")
    return step.title if language == "en" else text.step(language, text_name(ref, language)).title


def _step_cells(sc: Scenario, number: int, ref: StepRef, language: str) -> list[NotebookNode]:
    title = step_title(ref, language)
    found = text.step(language, text_name(ref, language))
    if "learn" in found.meta:  # where the step's own page is not the whole story (the bootstrap's methods)
        learn = text.expand(text.unwrap(str(found.meta["learn"])), language, where=found.name)
    else:
        learn = text.link(language, text.page_key(STEPS[ref.step].doc_url)[1])
    about = (f"## {number}. {title}\n\n{narrative(sc, ref, language)}\n\n"
             f"{_shared(language, 'learn')} {learn}")
    return [_md(f"about-{ref.id}", about), _code(f"run-{ref.id}", f'rb.run("{ref.id}")')]


def notebook_path(scenario_id: str, language: str = "en", root: Path = NOTEBOOKS) -> Path:
    """Where the notebook of `scenario_id` in `language` is: `notebooks/<id>.ipynb` in English,
    `notebooks/<language>/<id>.ipynb` in any other language.

    >>> notebook_path("new-new", "nl", Path("notebooks")).as_posix()
    'notebooks/nl/new-new.ipynb'
    """
    return root / f"{scenario_id}.ipynb" if language == "en" else root / language / f"{scenario_id}.ipynb"


def build(scenario_id: str, language: str = "en") -> NotebookNode:
    """The notebook of one scenario in `language` (see the module docstring for its shape)."""
    sc = scenario(scenario_id)
    about = text.scenario(language, sc.id)
    where = f"dwlib/text/{language}/scenarios/{sc.id}.md"
    steps = "\n".join(f"{i}. `{ref.id}`" for i, ref in enumerate(sc.steps, 1))
    intro = _shared(
        language, "intro", sc, title=about.title, id=sc.id, steps=steps,
        situation=text.expand(text.unwrap(str(about.meta["situation"])), language, where=where),
        connection=_shared(language, "connection", sc),
        then=text.expand(about.body, language, where=where),
        hr_note=_shared(language, "hr_note"),
        # An operations runbook follows its own page; a setup, its scenario of the setup guidance.
        guide=text.link(language, str(about.meta.get("guide", f"dw/connection-setup#{sc.id}"))),
        notebook=notebook_path(sc.id, language, Path("notebooks")).as_posix(),
        lang_option="" if language == "en" else f" --lang {language}",
    )
    # An operations runbook has no connection text or note: no blank paragraph or space stays for them.
    intro = re.sub(r"\n{3,}", "\n\n", re.sub(r"(?<=\S)  (?=\S)", " ", intro))
    cells = [
        _md("intro", intro),
        _code("parameters", _parameters(), tags=["parameters"]),
        _md("about-form", _shared(language, "form")),
        _code("form", f'from dwlib import ui\n\nform = ui.parameter_form(globals(), '
                      f'scenario="{sc.id}")\nform'),
        _md("about-open", _shared(language, "open")),
        _code("open", f'from dwlib.runbook import Runbook\n\nrb = Runbook.from_notebook(globals(), '
                      f'scenario="{sc.id}")\nrb'),
        _md("about-connect", _shared(language, "connect")),
        _code("connect", "connection = ui.connect(rb)"),
        _md("about-board", _shared(language, "board")),
        _code("board", "board = ui.step_board(rb)\nboard"),
    ]
    for number, ref in enumerate(sc.steps, 1):
        cells += _step_cells(sc, number, ref, language)
    cells += [_md("about-summary", _shared(language, "summary")), _code("summary", "ui.summary(rb)")]
    notebook: NotebookNode = nbformat.v4.new_notebook(cells=cells, metadata=_METADATA)
    return notebook


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
    notebook: NotebookNode = nbformat.v4.new_notebook(cells=cells, metadata=_METADATA)
    return notebook


def render(name: str, language: str = "en") -> str:
    """The notebook `name` (a scenario id, or `review`) in `language` as the text committed in
    `notebooks/` (`notebooks/<language>/` for a language other than English)."""
    return str(nbformat.writes(build_review() if name == REVIEW else build(name, language))) + "\n"


def generated() -> list[tuple[str, str]]:
    """Every notebook the builder writes, as (name, language): each scenario in each language, and
    the review notebook (in English)."""
    return [(sc, str(lang)) for lang in text.available() for sc in SCENARIOS] + [(REVIEW, "en")]


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with `--check`, compare) every notebook; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m dwlib.notebooks", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report notebooks that differ, write nothing")
    parser.add_argument("--dir", type=Path, default=NOTEBOOKS, help=f"where the notebooks are ({NOTEBOOKS})")
    args = parser.parse_args(argv)
    stale = []
    for name, language in generated():
        path = notebook_path(name, language, args.dir)
        source = render(name, language)
        if path.is_file() and path.read_text(encoding="utf-8") == source:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source, encoding="utf-8")
    for path in stale:
        print(f"{'differs' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
