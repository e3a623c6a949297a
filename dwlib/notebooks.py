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
from collections.abc import Callable, Sequence
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from dwlib.params import Params
from dwlib.scenarios import OPERATIONS, SCENARIOS, Scenario, StepRef, scenario
from dwlib.steps import STEPS

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

LEARN = "https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/"
DW, PP = LEARN + "data-entities/dual-write/", LEARN + "power-platform/"
# The bootstrap FAQ (owning business unit → company, FastTrack's sample) as the Dutch edition of the
# page the guidance links still carries it; the English page now describes the other method.
BOOTSTRAP_FAQ = ("https://learn.microsoft.com/nl-nl/dynamics365/fin-ops-core/dev-itpro/data-entities/"
                 "dual-write/bootstrap-company-data")

# Every Microsoft Learn page the notebooks link, with its title as the page shows it (its heading),
# from MicrosoftDocs/dynamics-365-unified-operations-public (articles/fin-ops-core/dev-itpro/…) and,
# for the FAQ, MicrosoftDocs/Dynamics-365-Operations.nl-nl. A link's text is its page's title.
PAGES = {
    DW + "connection-setup": "Guidance for dual-write setup",
    DW + "lcs-setup": "Dual-write setup from Lifecycle Services",
    DW + "enable-dual-write": "Enable dual-write for existing finance and operations apps",
    PP + "enable-power-platform-integration": "Enable Power Platform Integration",
    PP + "environment-lifecycle-connect-finops-new-dv":
        "Connect finance and operations apps with a new Microsoft Dataverse instance",
    PP + "environment-lifecycle-connect-finops-existing-dv":
        "Connect finance and operations apps with an existing Microsoft Dataverse instance",
    DW + "requirements-and-prerequisites": "System requirements and prerequisites troubleshooting",
    DW + "edit-legal-entity": "Edit a legal entity after dual-write setup",
    DW + "customizing-mappings": "Customize table and column mappings",
    DW + "bootstrap-company-data": "Initialize company data",
    BOOTSTRAP_FAQ: "Veelgestelde vragen over automatisch laden met bedrijfsgegevens",
    DW + "initial-sync-guidance": "Considerations for initial synchronization",
    DW + "enable-entity-map": "Enable table maps for dual-write",
    DW + "dual-write-troubleshooting-initial-sync": "Troubleshoot issues during initial synchronization",
    DW + "relink-environments": "Unlink and relink dual-write environments",
    DW + "reset": "Reset dual-write connections",
    DW + "pause-for-maintenance": "Pause dual-write for maintenance",
    DW + "errors-and-alerts": "Error management and alert notifications",
}


def page_title(url: str) -> str:
    """The title of the Learn page `url` links (an anchor or the en-us locale named or not).

    >>> page_title("https://learn.microsoft.com/dynamics365/fin-ops-core/dev-itpro/data-entities/"
    ...            "dual-write/connection-setup#new-existing")
    'Guidance for dual-write setup'
    """
    page = url.partition("#")[0].replace("microsoft.com/dynamics365/", "microsoft.com/en-us/dynamics365/")
    try:
        return PAGES[page]
    except KeyError:
        raise KeyError(f"no title for {page}: add the page's title (its heading on Learn) to "
                       "dwlib.notebooks.PAGES") from None


def link(url: str) -> str:
    """A Markdown link to a Learn page whose text is the page's title."""
    return f"[{page_title(url)}]({url})"


GUIDANCE, LCS, ENABLE_EXISTING = DW + "connection-setup", DW + "lcs-setup", DW + "enable-dual-write"
SYNC_GUIDANCE, ENABLE_MAPS = DW + "initial-sync-guidance", DW + "enable-entity-map"
INITIAL_SYNC_TROUBLESHOOTING = DW + "dual-write-troubleshooting-initial-sync"
PP_NEW = PP + "environment-lifecycle-connect-finops-new-dv"
PP_EXISTING = PP + "environment-lifecycle-connect-finops-existing-dv"

HR_NOTE = ("> **Human Resources:** dual-write connects the Human Resources *module* of Dynamics 365 Finance, "
           f"not the separate Dynamics 365 Human Resources *app* (the note at the top of {link(GUIDANCE)}).")


def _connection(sc: Scenario) -> str:
    """Where the scenario's dual-write connection is set up, for its introduction."""
    dataverse = PP_NEW if sc.dataverse == "new" else PP_EXISTING
    if sc.finops == "existing":
        return (f"For an existing finance and operations environment the connection is set up from finance "
                "and operations, not provisioned by Lifecycle Services: the guidance links "
                f"{link(ENABLE_EXISTING)}. Today that is the environment's Power Platform integration in "
                f"Lifecycle Services ({link(dataverse)}), then the dual-write application; the connection "
                "covers every legal entity, and the runbook keeps only those in `legal_entities`.")
    return (f"The connection is set up from Lifecycle Services ({link(LCS)}), on the environment's Power "
            f"Platform integration ({link(dataverse)}), for the DAT company.")


# Per scenario: where things stand, then (after where the connection is set up) what the runbook does.
INTRO = {
    "new-new": (
        "Finance and operations is new and empty, and so is Dataverse.",
        "When the setup is complete the environments are provisioned, dual-write is connected for DAT and "
        "the table maps run for live sync. The runbook does not take that on trust: it verifies each result "
        "through documented APIs, plans the maps (with no data on either side there is nothing to copy, so "
        "they run without an initial sync) and ends with a live round trip between the two sides.",
    ),
    "new-existing": (
        "Finance and operations is new and empty; Dataverse already holds customer data.",
        "After the link, that data needs a company of its own, in the guidance's order: create the company "
        "in finance and operations, add it to the dual-write connection, bootstrap the existing Dataverse "
        "rows with its company code, and run the initial sync, here with a plan that picks per table map "
        f"between the initial sync and a migration around it ({link(SYNC_GUIDANCE)}).",
    ),
    "new-data-new": (
        "Finance and operations is new but already holds data; Dataverse is new.",
        "After the link, the finance and operations data is copied to Dataverse by the initial sync, or "
        "migrated around it where the volumes exceed what the initial sync supports "
        f"({link(SYNC_GUIDANCE)}).",
    ),
    "new-data-existing": (
        "Both sides hold data, and finance and operations is new.",
        "After the link, the finance and operations data is planned first. Then the existing Dataverse data "
        "gets a company of its own (created in finance and operations, added to the connection, "
        "bootstrapped) before any map goes live, the plan is made again with that company's volume, and one "
        "initial sync per table map moves the data both ways, per legal entity.",
    ),
    "existing-new": (
        "An existing finance and operations environment is connected to a new Dataverse environment.",
        "After the link the runbook plans the maps and copies the data of the legal entities you keep (at "
        "most 40 for an initial sync) to Dataverse by the initial sync, or migrates it around the initial "
        "sync where the volumes call for it.",
    ),
    "existing-existing": (
        "Both environments exist and hold data.",
        "After the link, the existing Dataverse rows get their company (bootstrap, by account number or by "
        "owning business unit: simulate, then apply) before any map goes live, the plan chooses per table "
        "map between the initial sync and a migration around it, the maps are enabled, the initial sync "
        "runs, and both sides are reconciled.",
    ),
    "refresh-relink": (
        "A database of finance and operations or Dataverse was refreshed or copied (for example production "
        "copied to a test environment): the copied dual-write configuration may still name the source's "
        "environments.",
        "The runbook detects that from outside, stops the maps and resets the link as the documentation "
        f"prescribes after a backup and restore ({link(DW + 'relink-environments')}, {link(DW + 'reset')}), "
        "then relinks as a setup does: the Legal entities map, the plan's rules for each map's initial "
        "sync, the maps, and a reconciliation of both sides. A refresh that cannot be relinked stops at the "
        "first step, with the reason.",
    ),
    "maintenance": (
        "Dual-write runs, and finance and operations or Dataverse is about to go into maintenance.",
        "The runbook records every map's state, pauses the running maps (their changes queue, at most one "
        f"day and 1 GB: {link(DW + 'pause-for-maintenance')}), waits at a gate until you confirm that the "
        "maintenance is over, resumes the maps with catch-up, watches the queues drain, and reconciles both "
        "sides.",
    ),
    "add-legal-entity": (
        "Dual-write runs for some legal entities, and another company is to be added to the connection.",
        "The runbook creates the company in finance and operations if it does not exist yet, adds it to the "
        f"connection ({link(DW + 'edit-legal-entity')}) with initial writes where the volumes allow, "
        "bootstraps its Dataverse rows if there are any, lets the plan decide how its data moves, and "
        "reconciles that company only.",
    ),
}


def _power_platform_integration(sc: Scenario) -> str:
    if sc.finops == "existing":
        where = ("An existing finance and operations environment connects from finance and operations "
                 f"({link(ENABLE_EXISTING)}, the page the guidance links); today through its Power Platform "
                 "integration in Lifecycle Services")
    else:
        where = f"A new finance and operations environment is linked from Lifecycle Services ({link(LCS)})"
    if sc.dataverse == "new":
        dataverse = ("In LCS, Environment details > Power Platform Integration > Setup adds a new Dataverse "
                     "environment from a template: choose **Dynamics 365 standard with Dual-write**, which "
                     "also installs the dual-write application maps (**Dynamics 365 standard** installs "
                     f"none; {link(PP_NEW)})")
    else:
        dataverse = ("In LCS, Environment details > Power Platform Integration > Setup with **use a "
                     "different Power Platform environment** connects your existing Dataverse environment "
                     "(the same geography, 1 GB of free database capacity, and you a System Administrator "
                     f"there; {link(PP_EXISTING)})")
    scope = "every legal entity" if sc.finops == "existing" else "the DAT company"
    return (
        f"{where}. {dataverse}. LCS asks you to confirm by typing your name, because the integration "
        "**cannot be reversed**. Then Dual-write application > Configure installs the dual-write solutions, "
        f"and Link to Power Platform environment links dual-write, for {scope}. Both are portal actions "
        "without a public API, so this step is a gate: it shows what to do, then verifies the result "
        "through documented reads: `RetrieveFinanceAndOperationsIntegrationDetails` names this finance and "
        "operations environment and tenant, the dual-write solutions are at the required versions, the "
        "table maps are applied, and dual-write is linked for the companies the setup connects. Headless it "
        "waits up to `options.gate_timeout_s`, then says what is still missing. A link to another "
        "environment is reported, never changed."
    )


def _legal_entities(sc: Scenario) -> str:
    if sc.finops == "existing":
        start = ("The link covered every legal entity of finance and operations. This step makes the "
                 "connection hold only those in `legal_entities`: missing ones are added, the others are to "
                 "be removed")
    else:
        start = ("The setup linked dual-write for DAT. This step adds the other legal entities in "
                 "`legal_entities` that finance and operations already has (a company this run creates is "
                 "added later, by its own step), and companies the connection holds outside them are to be "
                 "removed")
    return (
        f"{start}, in the dual-write workspace (Environment details > Legal entities); that is a gate, read "
        "back from the connection itself. Linking creates no company in Dataverse: the Legal entities "
        "(cdm_companies) table map brings them, so this step then runs that map (and the reference maps the "
        "bootstrap reads) with its initial sync, as the bootstrap page's own steps do. Verified: the "
        "connection's legal entities, then one `cdm_company` row per company, with its owner team. When the "
        "connection cannot be read yet, that is a warning, never a pass. More than 40 legal entities when "
        "the scenario runs an initial sync, or more than 250, are refused before anything changes."
    )


BOOTSTRAP_METHODS = (f"by owning business unit, {link(BOOTSTRAP_FAQ)}; by matching account numbers, "
                     f"{link(DW + 'bootstrap-company-data')}")

# What each step does and why, in our words; keyed by step id where one step serves twice, and a
# function of the scenario where the step does different things in different scenarios.
NARRATIVE: dict[str, str | Callable[[Scenario], str]] = {
    "preflight": (
        "Before anything changes, the dual-write health check, done from outside with documented reads: both "
        "environments reachable and signed in; the Power Platform integration naming this finance and "
        "operations environment, in the same Microsoft Entra tenant and the same geography; neither a trial "
        "environment; the finance and operations and Dataverse versions the documentation requires; the "
        "dual-write solutions at the versions the table maps need, their plug-in steps enabled, and no "
        "Prospect to cash solution; the application users and the security roles of the app users and the "
        "owning teams; the finance and operations Microsoft Entra applications; `cdm_companies` without "
        "duplicate names or blank names; the legal entities in scope present in finance and operations and "
        "within the limits (40 with an initial sync, 250 for live sync); the default team of the root "
        "business unit; the Language locale of the data management source data formats, which the initial "
        f"sync needs to be en-us ({link(INITIAL_SYNC_TROUBLESHOOTING)}). What the link step installs later "
        "is *skipped* until then, and a check that cannot "
        "read what it needs is a warning, never a pass. Every check shows what it saw and, when something is "
        "off, the documented fix. This step only reads, and a failure stops the run here, before any step "
        "writes: a legal entity that finance and operations does not have, for example, is found now."
    ),
    "power-platform-integration": _power_platform_integration,
    "legal-entities": _legal_entities,
    "create-company": (
        "The existing Dataverse data needs a company of its own in finance and operations. This step creates "
        "the legal entities in `companies` that do not exist yet: first their accounting currency where "
        "finance and operations lacks it (named as Dataverse names it), then the legal entity, then the "
        "customer groups each needs (`customer_groups`: a new company has none, and a customer cannot be "
        "saved without one). Only what is missing is created. Creating a company cannot be undone, so the "
        "step asks for confirmation first (the Confirm button; headless `options.confirm_irreversible`)."
    ),
    "add-company": (
        "Add the new company to the dual-write connection (dual-write workspace, Environment details > Legal "
        "entities > Add legal entity). Its Dataverse rows get the company only from the bootstrap that "
        "follows, so the route follows the plan's limits: with initial writes when the new company's data "
        "fits them, else skipping them (the initial sync or the migration comes later); the result says "
        "which route and why. A portal gate, verified through the connection's legal entities and "
        "Dataverse (the company's `cdm_company` row and its owner team). It cannot be undone, so it asks "
        "for confirmation first."
    ),
    "detect-refresh": (
        "Read only. Whether this pair was refreshed or copied: the Power Platform integration must name this "
        "finance and operations environment (Reset link restores the connection from it, so otherwise the "
        "refresh cannot be relinked and the run stops here, saying why), and the finance and operations "
        "project configurations must name this Dataverse environment. Project configurations that name "
        "another one are the stale configuration a database copy leaves; the next steps clean it up."
    ),
    "stop-all-maps": (
        "Reset link needs every table map stopped. With a stale configuration, the maps that show Running "
        "are stopped (a portal gate, verified through the map states); a map that is Paused, Resuming or "
        "in its initial sync cannot be stopped, and the step says what to do. Without a stale "
        "configuration there is nothing to reset and nothing is stopped."
    ),
    "reset-link": (
        "The documented clean-up after a backup and restore: Reset link clears the finance and operations "
        "key tables (DualWriteProjectConfiguration, DualWriteProjectFieldConfiguration, "
        "BusinessEventsDefinition) and the Dataverse runtime configurations, and restores the connection "
        "from the Power Platform integration with the legal entities in `legal_entities`; Apply Solution "
        "brings the table maps back. A portal gate, verified by no project configuration naming another "
        "Dataverse environment. It cannot be undone, so it asks for confirmation first."
    ),
    "map-states": (
        "Read only. Every table map's state before the maintenance, as a table and an evidence CSV in the "
        "run record: the maps of the window are those Running (or already Paused) now."
    ),
    "pause-maps": (
        "Pause the running maps of the window: their creates and updates queue and are replayed in order on "
        "resume. A pause is meant for maintenance and has documented limits: at most one day, and a queue of "
        "at most 1 GB; past either, further records are blocked until the map is resumed and changes can be "
        "lost. The step checks both (the queue's size estimated from the Dataverse rows changed since the "
        "pause) and warns at three quarters of a limit."
    ),
    "maintenance-over": (
        "A gate: the run goes on only when you confirm that the maintenance of both environments is over "
        "(the Confirm button; headless `options.confirm_irreversible`, or run again with it once the window "
        "has closed). Verified by both environments answering. The pause's limits are checked again here: "
        "a pause past its limit is reported, and the run goes on to resume, which is the fix."
    ),
    "resume-maps": (
        "Resume the paused maps with *Catch up synchronization of queued records* and wait until each is "
        "Running again, which means its queue has drained. Records the target refuses during catch-up stay "
        "on the map's Catch-up errors tab for a day (retry them there with Retry All); they have no API, so "
        "the verify step's reconciliation shows any record that did not arrive."
    ),
    "map-defaults": (
        "An explicit option, not part of the documented path, and in no scenario by default: a Default "
        "value on a map's column (`table_maps[].defaults`), written to finance and operations when the "
        "Dataverse value is empty. It customises a standard map, and its result says so; the documented "
        "path gives existing Dataverse customers their customer group in the bootstrap instead "
        "(`bootstrap.customer_group`). A map must be stopped to be edited: a running map is stopped, "
        "edited and run again without initial sync. Verified in the map definitions Dataverse holds; "
        "without defaults there is nothing to do."
    ),
    "stop-maps": (
        "The company data goes in before dual-write is enabled for it (the bootstrap page). Table maps over "
        "the tables to stamp that already run (the Lifecycle Services setup starts them for a new finance "
        "and operations environment) are stopped first, so no stamped row goes to finance and operations on "
        "its own; the plan decides next how each map's data moves. With no such map running there is "
        "nothing to do."
    ),
    "bootstrap-simulate": (
        "Rows created in Dataverse before dual-write have no company, and dual-write syncs only rows that "
        "have one. Microsoft documents two ways to give them one, and `bootstrap.method` chooses: by "
        "**account number** (`account-number`), matching the existing rows to finance and operations "
        "customers and taking the company of the matching customer, the method of the current English "
        "page, which avoids duplicates when the same customers exist on both sides; or by **owning "
        "business unit** (`business-unit`), each business unit mapped to a company code in "
        "`bootstrap.mapping` (the key \"\" serves tables without an owner), as the sample of the bootstrap "
        "FAQ does (the Dutch edition of the page the guidance links still carries it). This first pass "
        "only reads: it writes a CSV of every change it would make, with the rule that matched each row, "
        "and of every row no rule stamps, with the reason."
    ),
    "bootstrap-apply": (
        "Now write the company lookup (`msdyn_company`) on the rows that need it, re-derived from the real "
        "state rather than from the CSV: in bulk (UpdateMultiple, up to 1,000 rows per request), leaving "
        "rows that already have a company alone, since the company is read-only once saved. "
        "`bootstrap-applied.csv` keeps what changed with each row's previous value and "
        "`bootstrap-failed.csv` the rows refused (more than `bootstrap.max_failed_rows` stop the step); a "
        "run again picks up what is left and changes nothing else. It cannot be undone, so it asks for "
        "confirmation first."
    ),
    "plan": (
        "Count the rows of every table map per legal entity on both sides, the rows dual-write would sync "
        "(key set, the map's filter true, a company on the Dataverse side), and apply the decision rules of "
        f"{link(SYNC_GUIDANCE)}: at most 500,000 rows per legal entity per run, 70,000 for single-threaded "
        "maps going into finance and operations, at most 40 legal entities, the lookup limit, no double "
        "quotes in mapped text, and the dependencies between maps. The plan table says for each map, in "
        "dependency order: initial sync (with its master), migrate around it and enable without initial "
        "sync, or enable without initial sync (nothing to copy), with the reason and an estimated duration. "
        "Existing Dataverse rows that dual-write will not pick up are never left unsaid: rows without a "
        "company, outside the map's filter (accounts that are not customers, contacts that are not "
        "sellable) or without their key are counted per table, company and reason, listed in "
        "`plan-ineligible-rows.csv`, and make the step a warning with the documented fix for each reason. "
        "It only reads."
    ),
    "migrate": (
        "Where the plan sends a map around the initial sync, move its data the documented other way while "
        "the maps do not run, per legal entity: finance and operations to Dataverse from a data management "
        "export package (`migrate.export_project`) written in bulk (UpsertMultiple), Dataverse to finance "
        "and operations as an import package (`migrate.import_project`). Every mapped column moves, value "
        "maps applied both ways (on-hold status, yes/no fields); the packages' numbers and dates are read "
        "and written in the Language locale finance and operations names for their source data format "
        "(nl-NL writes decimal commas and day-month-year dates), and a value that does not read in it stops "
        "the step with the documented fix. The maps can then be enabled without an initial sync. A map that "
        "runs and has rows to move is stopped first (a gate in the dual-write workspace) and left stopped "
        "for the next step; `migrate.csv` lists every row written. "
        "When the plan sends nothing this way, there is nothing to do."
    ),
    "table-maps": (
        f"Enable the table maps in dependency order, as the guidance's example in {link(ENABLE_MAPS)} does "
        "for Customers V3—Contacts: the prerequisites (legal entities, currencies, terms of payment, "
        "customer groups) first, each with the master for the initial sync and the Initial Sync check box "
        "as the plan decided (cleared for maps migrated around it or with nothing to copy). Default values "
        "from the parameters are set first. Running maps is a gate in the dual-write workspace (the Run "
        "dialog), or, when opted in, the unsupported gateway; a failed initial sync shows its top errors "
        "with the documented fix."
    ),
    "initial-sync": (
        "Follow the initial sync of every map the plan gives one to its end: the map ends Running, or Not "
        "running when it failed. A map not started yet is run with its initial sync; a running map whose "
        "rows do not reconcile for the companies in scope gets its initial sync again, so rows written while "
        "none covered them are copied. When it fails, the top errors are shown with the documented "
        "remediation, so they can be fixed and the step run again."
    ),
    "plan-new-company": (
        "Plan again now that the new company holds the bootstrapped Dataverse rows: its volume meets the "
        "same limits (500,000 rows per legal entity per run, 70,000 into finance and operations for "
        "single-threaded maps) before its initial sync. It only reads."
    ),
    "verify": (
        "Reconcile both sides: row counts and keys per company per table map, and their values, compared "
        "through a checksum of every two-way mapped column on each side, computed as the pages arrive (value "
        "maps applied, lookups by the key of the row they refer to, numbers by value, text trimmed, so equal "
        "data in other forms is equal); when they differ, `verify-differences.csv` shows differing rows "
        "with both sides' values. Every missing key is in `verify-missing-keys.csv`; Dataverse rows "
        "dual-write will not pick up are counted again and listed in `verify-ineligible-rows.csv`, a "
        "warning with the fix. Then prove live sync with a round trip: a test customer created in "
        "finance and operations must appear in Dataverse, a change made there must come back, and the test "
        "rows are deleted on both sides afterwards. **The round trip writes into both environments**, and "
        "live sync hands the test customer to whatever else listens there, so against real environments it "
        "waits for your confirmation (the Confirm button; headless `options.confirm_irreversible`). "
        "`verify.round_trip: never` reconciles only; `once`, the default, makes it once per pair of "
        "environments; a dry run never writes. Against the local sandbox it goes ahead."
    ),
}

# The Learn line under a step, where its own page is not the whole story: the bootstrap links the
# page of each documented method.
LEARN_LINE = {"bootstrap-simulate": BOOTSTRAP_METHODS, "bootstrap-apply": BOOTSTRAP_METHODS}


SUMMARY = ("## Summary\n\nEvery step of this run, as the run record keeps it and its HTML report shows "
           "it. In JupyterLab, once every step is done, save the notebook (Ctrl+S) and press **Seal**: it "
           "writes the report beside the record and records the notebook's sha256 (headless, `dw run` "
           "seals the run itself).")

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


def narrative(sc: Scenario, ref: StepRef) -> str:
    """What step `ref` of scenario `sc` does and why (the Markdown above its cell, without the title).

    >>> narrative(scenario("new-new"), scenario("new-new").steps[0]).startswith("Before anything changes")
    True
    """
    text = NARRATIVE.get(ref.id) or NARRATIVE[ref.step]
    return text(sc) if callable(text) else text


def _step_cells(sc: Scenario, number: int, ref: StepRef) -> list[NotebookNode]:
    step = STEPS.get(ref.step)
    if step is None:
        raise KeyError(f"step {ref.step!r} is not registered in dwlib.steps: implement it before "
                       "building the notebooks")
    learn = LEARN_LINE.get(ref.step) or link(step.doc_url)
    about = f"## {number}. {step.title}\n\n{narrative(sc, ref)}\n\nMicrosoft Learn: {learn}"
    return [_md(f"about-{ref.id}", about), _code(f"run-{ref.id}", f'rb.run("{ref.id}")')]


def build(scenario_id: str) -> NotebookNode:
    """The notebook of one scenario (see the module docstring for its shape)."""
    sc = scenario(scenario_id)
    steps = "\n".join(f"{i}. `{ref.id}`" for i, ref in enumerate(sc.steps, 1))
    situation, then = INTRO[sc.id]
    connection = "" if sc.id in OPERATIONS else _connection(sc)
    intro = (
        f"# {sc.title}\n\n{' '.join(filter(None, (situation, connection, then)))}\n\n{HR_NOTE}\n\nThis runbook "
        f"follows the scenario `{sc.id}` of Microsoft's {link(sc.doc_url)}. Each step first checks the real "
        "state and changes only what is missing, so running the notebook again is safe: finished steps "
        "report *already done*.\n\n**Run it** in JupyterLab: set `params_file` below (copy "
        "`params/template.yaml`), or load and edit a parameters file in the form, then run the cells in "
        f"order. Headless: `dw run {sc.id} -f PARAMS.yaml`, or `papermill notebooks/{sc.id}.ipynb OUT.ipynb "
        f"-f PARAMS.yaml`. Against the local sandbox: `dw sandbox start --profile {sc.id}` and "
        f"`params/sandbox-{sc.id}.yaml` (or `dw run {sc.id} -f params/sandbox-{sc.id}.yaml "
        f"--sandbox`).\n\nSteps:\n\n{steps}"
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
        cells += _step_cells(sc, number, ref)
    cells += [_md("about-summary", SUMMARY), _code("summary", "ui.summary(rb)")]
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
