"""Bootstrap: stamp existing Dataverse rows with their company before dual-write syncs them.

"Only rows that have company data are eligible for dual-write", so rows created before dual-write
(accounts, contacts, …) need their company lookup (`msdyn_company` → `cdm_company`) set before the
maps go live ("you must initialize the Dataverse data ... with company information before you
enable dual-write"). Both documented methods, chosen by `bootstrap.method`:

- `business-unit` — the bootstrap FAQ's sample (what the nl-NL page describes): the company follows
  the row's owning business unit through `bootstrap.mapping` (business unit name → company code;
  the key "" serves tables without an owning business unit);
- `account-number` — the current English page (Azure Data Factory): a row whose account number is
  an F&O customer account takes that customer's company (`DataAreaId`) and customer group, so the
  initial sync merges it with the F&O customer instead of creating a duplicate; the natural key is
  the integration key of the table's customer map (`accountnumber` = `CustomerAccount` for
  accounts, `msdyn_contactpersonid` for person customers). Rows without an F&O match follow the
  business-unit mapping where it names their business unit ("Accounts that exist only in
  Dataverse are not initialized" by the page's pipeline).

Rows matched by neither rule are reported (with the reason) and stay without a company. Rows the
Customers V3 maps will send to F&O also need a customer group there (F&O requires one): a matched
row takes the F&O customer's group, the others `bootstrap.customer_group` of their company, when
they have none; rows left without one are a warning. Only rows whose company is still empty are
touched: the company "becomes read-only once saved", and a re-run finds the stamped rows done.

- `stop-maps` first stops the running maps over the tables to stamp (in new-existing the LCS setup
  started them): a stamped row of a running map would go to F&O at once, one by one, before the
  plan said how the data moves.
- `bootstrap-simulate` reads everything and writes `bootstrap-simulation.csv`: every planned
  change with the rule that matched (`rule`), and every row that cannot be mapped, with the
  reason. It never writes to Dataverse.
- `bootstrap-apply` (irreversible) re-derives the rows from the real state (not from the CSV, so a
  killed run resumes where it stopped) and stamps them with UpdateMultiple, `options.batch_size`
  rows per request and `options.concurrency` requests in flight. A request refused because of
  its rows is split until the refused rows are isolated; more failed rows than
  `bootstrap.max_failed_rows` stop the run. `bootstrap-applied.csv` (what changed, with the prior
  value) and `bootstrap-failed.csv` are appended chunk by chunk, so a killed run leaves an exact
  record of everything it was told succeeded.

Example:
    params: bootstrap: {method: account-number, mapping: {"Contoso US": USMF}, customer_group: "30"}
    BootstrapSimulate().execute(ctx).counts      → {"accounts USMF": 40, "unmapped": 2, …}
    BootstrapApply().execute(ctx).evidence_files → [".../bootstrap-applied.csv"]
    >>> BootstrapApply.irreversible, BootstrapSimulate.read_only
    (True, True)
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dwlib import catalog
from dwlib.catalog.errors import DOCS_ROOT
from dwlib.clients.bulk import BulkResult, run_chunks
from dwlib.clients.errors import ClientError
from dwlib.vocab import LIVE_MAP_STATES, MapState, StepStatus

from .base import Check, Finding, Step, StepContext, StepError, StepResult, environment, register, worst
from .link import companies
from .support.bulkwrite import AppendCsv, isolate, progress_of
from .support.dvmeta import Lookup, TableInfo, Tables
from .support.spill import BATCH as SPILL_BATCH
from .support.spill import Spill

if TYPE_CHECKING:
    from dwlib.clients.dataverse import DataverseClient
    from dwlib.clients.session import Session
    from dwlib.params import Params

BOOTSTRAP_DOC = DOCS_ROOT + "bootstrap-company-data"
SIMULATION_CSV = "bootstrap-simulation.csv"
APPLIED_CSV = "bootstrap-applied.csv"
FAILED_CSV = "bootstrap-failed.csv"
UNMAPPED_CSV = "bootstrap-unmapped.csv"
OWNING_BU = "owningbusinessunit"
BY_ACCOUNT_NUMBER, BY_BUSINESS_UNIT = "account number", "business unit"  # the rule that matched a row
GROUP_COLUMN = "CustomerGroupId"  # F&O's customer group, mapped to msdyn_customergroupid.msdyn_groupid
ADD_COMPANY_FIX = ("add the company to the dual-write connection and let the Legal entities (cdm_companies) "
                   "map bring its row (the legal-entities and add-company steps), then run the bootstrap "
                   "again")


@dataclass(frozen=True, slots=True)  # slots: one is made per row read (millions), then spilled
class RowChange:
    """One row of a bootstrapped table, its company and customer group (empty `company_code` when
    unmapped), and the rule that gave them."""

    table: str
    row_id: str
    key: str
    name: str
    owning_business_unit: str
    rule: str
    company_code: str
    company_id: str
    prior_company: str
    customer_group: str = ""
    customer_group_id: str = ""
    reason: str = ""  # why the row cannot be mapped, or why it gets no customer group

    COLUMNS = ("table", "row_id", "key", "name", "owning_business_unit", "rule", "company_code", "company_id",
               "prior_company", "customer_group", "customer_group_id", "reason")


FAILED_COLUMNS = (*RowChange.COLUMNS[:-1], "error", "remediation")
_fields = attrgetter(*RowChange.COLUMNS)  # a RowChange's values, as a tuple, in field order


@dataclass(frozen=True)
class Target:
    """A table to stamp: its metadata, company lookup (navigation property and column), and the
    customer map of the table (with its customer-group lookup), if any."""

    info: TableInfo
    nav: str
    lookup: Lookup
    customer_map: catalog.TableMap | None = None
    group: tuple[str, Lookup, TableInfo] | None = None  # navigation property, lookup, group table


@dataclass
class BootstrapState:
    """What the real state says: rows to stamp, rows that cannot be mapped, and how it was read.

    The rows themselves are kept on disk (`spill`: a million rows to stamp would take gigabytes as
    objects) and read back one at a time (`stamps`, `unmapped`); what the step reports about them
    is counted as they are added. `close` deletes them."""

    targets: dict[str, Target]
    spill: Spill
    checks: list[Check] = field(default_factory=list)
    outcome: ApplyOutcome | None = None  # filled by bootstrap-apply's act
    to_stamp: Counter[str] = field(default_factory=Counter)  # per table
    not_mapped: int = 0
    by_company: Counter[str] = field(default_factory=Counter)  # "<table> <company code>"
    by_rule: Counter[str] = field(default_factory=Counter)
    planned: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (table, company, rule)
    unmapped_groups: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (table, unit, reason)
    without_group: Counter[str] = field(default_factory=Counter)  # stamped rows' reason for no group
    groups_given: Counter[str] = field(default_factory=Counter)  # customer group → stamped rows

    @property
    def stamp_count(self) -> int:
        """Rows to stamp, all tables."""
        return sum(self.to_stamp.values())

    def add(self, changes: Iterable[RowChange]) -> None:
        """Count `changes` and keep them on disk (rows to stamp per table, unmapped rows)."""
        tables = {t: f"stamp_{i}" for i, t in enumerate(self.targets)}
        buffers: dict[str, list[tuple[str, ...]]] = {}
        for c in changes:
            if c.company_code:
                name = tables[c.table]
                self.to_stamp[c.table] += 1
                self.by_company[f"{c.table} {c.company_code}"] += 1
                self.planned[(c.table, c.company_code, c.rule)] += 1
                if c.reason:
                    self.without_group[c.reason] += 1
                elif c.customer_group_id:
                    self.groups_given[c.customer_group] += 1
            else:
                name = "unmapped"
                self.not_mapped += 1
                self.unmapped_groups[(c.table, c.owning_business_unit, c.reason)] += 1
            self.by_rule[c.rule or "none"] += 1
            buffer = buffers.setdefault(name, [])
            buffer.append(_fields(c))
            if len(buffer) >= SPILL_BATCH:
                self.spill.add(name, buffer)
                buffer.clear()
        for name, buffer in buffers.items():
            self.spill.add(name, buffer)

    def stamps(self, table: str | None = None) -> Iterator[RowChange]:
        """The rows to stamp (of `table`, or of every table), in the order they were read."""
        for i, t in enumerate(self.targets):
            if table in (None, t):
                yield from (RowChange(*v) for v in self.spill.listed(f"stamp_{i}"))

    def unmapped(self) -> Iterator[RowChange]:
        """The rows no rule maps, in the order they were read."""
        return (RowChange(*v) for v in self.spill.listed("unmapped"))

    def close(self) -> None:
        """Delete the rows kept on disk."""
        self.spill.close()

    def summary(self) -> str:
        """e.g. `stamp 294 rows (accounts USMF 80, …); 6 rows cannot be mapped`."""
        per = ", ".join(f"{k} {n}" for k, n in self.per_company().items())
        text = f"stamp {self.stamp_count} rows with their company" + (f" ({per})" if per else "")
        return text + (f"; {self.not_mapped} rows cannot be mapped" if self.not_mapped else "")

    def per_company(self) -> dict[str, int]:
        """Rows to stamp per `"<table> <company code>"`."""
        return dict(sorted(self.by_company.items()))

    def per_rule(self) -> dict[str, int]:
        """Rows per rule that matched them (unmapped rows under "none")."""
        return dict(sorted(self.by_rule.items()))

    def unmapped_table(self) -> list[dict[str, Any]]:
        """Unmapped rows grouped by table, business unit and reason."""
        return [{"table": t, "owning_business_unit": bu, "rows": n, "reason": r}
                for (t, bu, r), n in sorted(self.unmapped_groups.items())]


def _customer_map(entity_set: str) -> catalog.TableMap | None:
    """The company-specific map of the table whose F&O rows are customers (Customers V3 …)."""
    return next((m for m in catalog.table_maps() if m.dataverse_table == entity_set and m.company_specific
                 and m.finops_entity_set and any(c.finops == GROUP_COLUMN for c in m.mappings)), None)


def _key_columns(info: TableInfo) -> list[str]:
    """The natural key of the table's rows as dual-write matches them (catalogue integration keys)."""
    keys = [k for m in catalog.table_maps() if m.dataverse_table == info.entity_set for k in m.dataverse_key]
    return [k for k in dict.fromkeys(keys) if k in info.attributes]


def _target(tables: Tables, entity_set: str) -> Target:
    info = tables.info(entity_set)
    found = info.company_lookup()
    if found is None:
        raise StepError(f"table {entity_set} has no company lookup (msdyn_company → cdm_company): it is not "
                        "striped by company, so dual-write does not need it bootstrapped. Fix: remove it "
                        "from bootstrap.tables")
    m = _customer_map(entity_set)
    group = None
    row = next((c for c in m.mappings if c.finops == GROUP_COLUMN and c.lookup), None) if m else None
    if row is not None and row.lookup is not None and row.lookup[0] in info.lookups:
        lookup = info.lookups[row.lookup[0]]
        group = (row.lookup[0], lookup, tables.of_logical(lookup.target))
    return Target(info, *found, customer_map=m, group=group)


@dataclass(frozen=True)
class Rules:
    """What decides a row's company: the business-unit mapping, and (account-number method) the
    F&O customers by key, kept in a spill file (a million customers' keys as a dict would take a
    gigabyte): `finops_matches` looks a key up."""

    mapping: dict[str, str]
    units: dict[str, str]  # business unit id → name
    ids: dict[str, str]  # company code → cdm_companyid
    customer_group: str | None
    groups: dict[tuple[str, str], str]  # (company id, group id lower) → group row id
    finops: Spill | None = None  # account-number method: table "fo_<i>" per target with a customer map
    finops_tables: dict[str, str] = field(default_factory=dict)  # entity set → its table in `finops`

    def finops_matches(self, entity_set: str, key: str) -> list[tuple[str, str]]:
        """[(company code, customer group)] of the F&O customers whose key is `key` (any case)."""
        table = self.finops_tables.get(entity_set)
        if self.finops is None or table is None or not key:
            return []
        return [(code, group) for code, group in self.finops.values(table, key.lower())]


def _finops_customers(session: Session, m: catalog.TableMap) -> Iterator[tuple[str, tuple[str, str]]]:
    """F&O rows of the customer map `m`: (key in lower case, (company code, customer group))."""
    assert m.finops_entity_set is not None
    key = m.finops_key[0]
    select = list(dict.fromkeys([key, "dataAreaId", GROUP_COLUMN, *(c.column for c in m.finops_conditions)]))
    for row in session.finops.query(m.finops_entity_set, select=select, cross_company=True):
        if row.get(key) and all(c.matches(row) for c in m.finops_conditions):
            yield str(row[key]).lower(), (str(row["dataAreaId"]).upper(), str(row.get(GROUP_COLUMN) or ""))


def _groups(dv: DataverseClient, targets: Iterable[Target]) -> dict[tuple[str, str], str]:
    """Customer-group rows in Dataverse: (company id, group id lower) → row id."""
    out: dict[tuple[str, str], str] = {}
    seen: set[str] = set()
    for t in targets:
        if t.group is None or t.group[2].entity_set in seen:
            continue
        table = t.group[2]
        seen.add(table.entity_set)
        company = table.company_lookup()
        company_col = company[1].column if company else None
        key = next(k for k in _key_columns(table))
        select = [table.primary_id, key, *([company_col] if company_col else [])]
        for row in dv.query(table.entity_set, select=select):
            if row.get(key):
                company_id = str(row.get(company_col) or "") if company_col else ""
                out[(company_id, str(row[key]).lower())] = row[table.primary_id]
    return out


def read_state(ctx: StepContext) -> BootstrapState:
    """Read business units, companies, (account-number method) F&O customers, and every in-scope
    row whose company is empty; decide each row's company and customer group.

    Raises StepError when the business-unit mapping is empty (method business-unit) or names a
    company Dataverse does not have.
    """
    params, session, _ = environment(ctx)
    options = params.bootstrap
    mapping = options.mapping
    if not mapping and options.method == "business-unit":
        raise StepError("bootstrap.mapping is empty: map each owning business unit to a company code, e.g. "
                        'bootstrap: {mapping: {"Contoso US": USMF}} ("" for tables without an owner), or use '
                        "bootstrap.method: account-number")
    dv = session.dataverse
    ids = {r["cdm_companycode"].upper(): r["cdm_companyid"] for r in companies(session)
           if r.get("cdm_companycode")}
    absent = sorted({code for code in mapping.values() if code not in ids})
    if absent:
        raise StepError(f"company {', '.join(absent)} of bootstrap.mapping has no cdm_companies row in "
                        f"Dataverse (it has {', '.join(sorted(ids)) or 'none'}). Fix: {ADD_COMPANY_FIX}")
    units = {r["businessunitid"]: r["name"]
             for r in dv.query("businessunits", select=["businessunitid", "name"])}
    checks = [Check("bootstrap method", StepStatus.PASSED, _method_text(params))]
    unknown = sorted(set(mapping) - set(units.values()) - {""})
    if unknown:
        checks.append(Check("business units of the mapping", StepStatus.WARNING,
                            f"not in Dataverse: {', '.join(unknown)}",
                            fix="check the names in bootstrap.mapping against Settings > Business units"))
    tables = Tables(dv)
    targets = {t: _target(tables, t) for t in options.tables}
    spill = Spill()
    try:
        finops_tables: dict[str, str] = {}
        if options.method == "account-number":
            for i, (t, x) in enumerate(targets.items()):
                if x.customer_map:
                    finops_tables[t] = f"fo_{i}"
                    spill.put_many(finops_tables[t], _finops_customers(session, x.customer_map))
        rules = Rules(dict(mapping), units, ids, options.customer_group, _groups(dv, targets.values()),
                      spill if options.method == "account-number" else None, finops_tables)
        state = BootstrapState(targets, spill, checks)
        for target in targets.values():
            state.add(_changes(dv, target, rules))
    except BaseException:
        spill.close()
        raise
    checks.append(Check("rows without a company", StepStatus.PASSED,
                        f"{state.stamp_count + state.not_mapped} rows in {', '.join(targets)} have an empty "
                        f"company: {state.stamp_count} mapped, {state.not_mapped} cannot be mapped; by rule: "
                        + ", ".join(f"{k} {n}" for k, n in state.per_rule().items())))
    return state


def _method_text(params: Params) -> str:
    if params.bootstrap.method == "account-number":
        return ("account-number (current English page, Azure Data Factory): rows matching an F&O customer "
                "account take its company and customer group; the others follow bootstrap.mapping")
    return "business-unit (bootstrap FAQ sample): owning business unit → company, bootstrap.mapping"


def _company(row: dict[str, Any], key: str, target: Target, unit: str, owned: bool,
             rules: Rules) -> tuple[str, str, str, str]:
    """(rule, company code, F&O customer group, reason) of one row."""
    matches = rules.finops_matches(target.info.entity_set, key)
    companies_found = sorted({c for c, _ in matches})
    if len(companies_found) > 1:
        return "", "", "", (f"{key} is a customer account in F&O companies {', '.join(companies_found)}: "
                            "choose the company by hand")
    if matches:
        code, group = matches[0]
        if code not in rules.ids:
            return "", "", "", (f"{key} is a customer account of F&O company {code}, which has no "
                                "cdm_companies row (not in the connection's legal entities)")
        return BY_ACCOUNT_NUMBER, code, group, ""
    mapped = rules.mapping.get(unit)
    if mapped is not None:
        return BY_BUSINESS_UNIT, mapped, "", ""
    why = (f"owning business unit '{unit}' is not in bootstrap.mapping" if owned else
           'the table has no owning business unit and bootstrap.mapping has no "" entry')
    if rules.finops is not None:
        why = f"no F&O customer account {key!r}, and {why}" if key else f"no account number, and {why}"
    return "", "", "", why


def _changes(dv: DataverseClient, target: Target, rules: Rules) -> Iterator[RowChange]:
    info = target.info
    keys = _key_columns(info)
    owned = OWNING_BU in info.attributes
    name = info.primary_name if info.primary_name in info.attributes else None
    m = target.customer_map
    conditions = m.dataverse_conditions if m else ()
    match_key = m.dataverse_key[0] if m else None
    group_col = target.group[1].column if target.group else None
    select = [info.primary_id, target.lookup.column, *(["_owningbusinessunit_value"] if owned else []),
              *([name] if name else []), *keys, *(c.column for c in conditions),
              *([group_col] if group_col else [])]
    for row in dv.query(info.entity_set, select=list(dict.fromkeys(select)),
                        filter=f"{target.lookup.column} eq null"):
        unit = rules.units.get(row.get("_owningbusinessunit_value") or "", "") if owned else ""
        key = str(row.get(match_key) or "") if match_key else ""
        rule, code, group, reason = _company(row, key, target, unit, owned, rules)
        company_id = rules.ids.get(code, "")
        group, group_id, note = _group(row, target, conditions, group_col, company_id, group, rules)
        natural = "|".join(str(row[k]) for k in keys if row.get(k))
        label = str(row.get(name) or "") if name else ""
        prior = str(row.get(target.lookup.column) or "")
        yield RowChange(info.entity_set, row[info.primary_id], natural, label, unit, rule, code, company_id,
                        prior, group, group_id, reason or note)


def _group(row: dict[str, Any], target: Target, conditions: Sequence[catalog.Condition],
           group_col: str | None, company_id: str, from_finops: str, rules: Rules) -> tuple[str, str, str]:
    """(customer group, its Dataverse row id, note) for a row the customer map sends to F&O and that
    has no group; ("", "", "") when it needs none or has one."""
    if not company_id or group_col is None or row.get(group_col) or not conditions \
            or not all(c.matches(row) for c in conditions):
        return "", "", ""
    wanted = from_finops or rules.customer_group or ""
    if not wanted:
        return "", "", "no customer group: set bootstrap.customer_group (F&O requires one)"
    group_id = rules.groups.get((company_id, wanted.lower()), "")
    if not group_id:
        return wanted, "", (f"customer group {wanted} of its company is not in Dataverse (run the Customer "
                            "groups map)")
    return wanted, group_id, ""


def _write_rows(ctx: StepContext, name: str, rows: Iterable[RowChange]) -> Path:
    return ctx.write_csv(name, (asdict(r) for r in rows), list(RowChange.COLUMNS))


def _unmapped_check(state: BootstrapState, csv_name: str) -> Check:
    if not state.not_mapped:
        return Check("unmapped rows", StepStatus.PASSED, "every row without a company is mapped")
    units = sorted({unit or "(none)" for _, unit, _ in state.unmapped_groups})
    return Check("unmapped rows", StepStatus.WARNING,
                 f"{state.not_mapped} rows stay without a company, matched by no rule (owning business "
                 f"units: {', '.join(units)}); listed with the reason in {csv_name}",
                 fix="map these business units in bootstrap.mapping if their rows belong to a company; "
                     "rows without a company are not synced by dual-write", doc=BOOTSTRAP_DOC)


def _group_check(state: BootstrapState) -> Check:
    """Stamped rows the customer maps send to F&O that still get no customer group."""
    without = sum(state.without_group.values())
    if not without:
        shown = ", ".join(f"{g} {n}" for g, n in sorted(state.groups_given.items()))
        return Check("customer groups", StepStatus.PASSED,
                     "every stamped row the Customers V3 maps send to F&O has a customer group"
                     + (f" (set: {shown})" if shown else ""))
    reasons = state.without_group
    return Check("customer groups", StepStatus.WARNING,
                 f"{without} stamped rows the Customers V3 maps send to F&O get no customer group: "
                 + "; ".join(f"{r} ({n})" for r, n in sorted(reasons.items())),
                 fix="F&O requires a customer group: set bootstrap.customer_group to a group every company "
                     "has (the Customer groups map brings it to Dataverse), or give the rows a group",
                 doc=BOOTSTRAP_DOC)


@register
class BootstrapSimulate(Step):
    """Plan the company of every Dataverse row without one; writes a CSV, changes nothing.

    Example:
        r = BootstrapSimulate().execute(ctx)
        r.evidence_files → [".../bootstrap-simulation.csv"]; r.tables["planned"][0]
        {"table": "accounts", "company": "USMF", "rows": 40}
        >>> BootstrapSimulate.name
        'bootstrap-simulate'
    """

    name = "bootstrap-simulate"
    title = "Bootstrap company data: simulate"
    doc_url = BOOTSTRAP_DOC
    read_only = True

    def check(self, ctx: StepContext) -> Finding:
        state = read_state(ctx)
        return Finding(not state.stamp_count, state.summary(), todo=state, checks=state.checks)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        raise AssertionError("read-only step: execute never acts")

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        state: BootstrapState = finding.todo
        try:
            path = _write_rows(ctx, SIMULATION_CSV, chain(state.stamps(), state.unmapped()))
        finally:
            state.close()
        checks = [*state.checks, _unmapped_check(state, path.name), _group_check(state)]
        planned = [{"table": table, "company": company, "rule": rule, "rows": n}
                   for (table, company, rule), n in sorted(state.planned.items())]
        return self.result(
            worst(checks), f"simulation: would {state.summary()}; nothing was written",
            checks=checks, tables={"planned": planned, "unmapped": state.unmapped_table()},
            counts={**state.per_company(), **{f"rule {k}": n for k, n in state.per_rule().items()},
                    "to stamp": state.stamp_count, "unmapped": state.not_mapped},
            evidence_files=[str(path)],
            next_action="review the CSV, then run bootstrap-apply" if state.stamp_count else "")


# --- apply ----------------------------------------------------------------------------------------

@dataclass
class ApplyOutcome:
    """What bootstrap-apply did: rows stamped (per table and company), rows failed, whether it stopped."""

    limit: int
    applied: AppendCsv
    failures: AppendCsv
    stamped: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def succeeded(self, rows: Sequence[RowChange]) -> None:
        self.applied.write(asdict(r) for r in rows)
        with self._lock:
            self.stamped.update(f"{r.table} {r.company_code}" for r in rows)

    def fault(self, rows: Sequence[RowChange], error: ClientError) -> None:
        known = catalog.match_error(str(error))
        fix = known.remediation() if known else error.fix
        self.failures.write({**asdict(r), "error": str(error), "remediation": fix} for r in rows)
        with self._lock:
            self.failed += len(rows)
            if len(self.errors) < 5:
                self.errors.append(str(error))
            if self.failed > self.limit:
                self.stop.set()

    def files(self) -> list[Path]:
        return [f.path for f in (self.applied, self.failures) if f.written]


def _stamper(dv: DataverseClient, target: Target, outcome: ApplyOutcome) -> Callable[[list[RowChange]], None]:
    """Sends one chunk of a table's rows with UpdateMultiple, isolating the refused rows."""
    info = target.info
    bind = f"{target.nav}@odata.bind"

    group = f"{target.group[0]}@odata.bind" if target.group else ""

    def body(r: RowChange) -> dict[str, Any]:
        out = {info.primary_id: r.row_id, bind: f"cdm_companies({r.company_id})"}
        if r.customer_group_id and target.group:
            out[group] = f"{target.group[2].entity_set}({r.customer_group_id})"
        return out

    def update(chunk: list[RowChange]) -> BulkResult:
        bodies = [body(r) for r in chunk]
        return dv.update_multiple(info.entity_set, bodies, errors="collect", logical_name=info.logical_name)

    def send(chunk: list[RowChange]) -> None:
        isolate(update, chunk, done=outcome.succeeded, failed=outcome.fault, stop=outcome.stop)

    return send


def apply(ctx: StepContext, state: BootstrapState) -> ApplyOutcome:
    """Stamp `state.stamps` in bulk, table by table; stops past `bootstrap.max_failed_rows` failures."""
    params, session, _ = environment(ctx)
    outcome = ApplyOutcome(params.bootstrap.max_failed_rows,
                           AppendCsv(ctx.evidence_dir / APPLIED_CSV, RowChange.COLUMNS[:-1]),
                           AppendCsv(ctx.evidence_dir / FAILED_CSV, FAILED_COLUMNS))
    try:
        for table, target in state.targets.items():
            count = state.to_stamp[table]
            if not count or outcome.stop.is_set():
                continue
            bar = ctx.progress(f"bootstrap {table}", count)
            try:
                run_chunks((r for r in state.stamps(table) if not outcome.stop.is_set()),
                           _stamper(session.dataverse, target, outcome),
                           chunk_size=params.options.batch_size, concurrency=params.options.concurrency,
                           progress=progress_of(bar), what=f"bootstrap of {table}")
            finally:
                bar.close()
    finally:
        outcome.applied.close()
        outcome.failures.close()
    return outcome


@register
class BootstrapApply(Step):
    """Stamp the Dataverse rows without a company, in bulk, from the real state. Irreversible.

    Example:
        r = BootstrapApply().execute(ctx)   # WAITING until confirmed
        r.counts → {"stamped": 294, "failed": 0, "remaining": 0, "unmapped": 6, …}
        >>> BootstrapApply.name
        'bootstrap-apply'
    """

    name = "bootstrap-apply"
    title = "Bootstrap company data: apply"
    doc_url = BOOTSTRAP_DOC
    irreversible = True

    def check(self, ctx: StepContext) -> Finding:
        state = read_state(ctx)
        _refuse_live(ctx, state)
        return Finding(not state.stamp_count, state.summary(), todo=state,
                       checks=[*state.checks, _group_check(state)])

    def act(self, ctx: StepContext, finding: Finding) -> None:
        finding.todo.outcome = apply(ctx, finding.todo)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        before: BootstrapState = finding.todo
        before.close()
        after = read_state(ctx)
        try:
            unmapped = _write_rows(ctx, UNMAPPED_CSV, after.unmapped()) if after.not_mapped else None
        finally:
            after.close()
        outcome = before.outcome
        checks = [*finding.checks, _unmapped_check(after, UNMAPPED_CSV)]
        files = [str(p) for p in [*(outcome.files() if outcome else []), *([unmapped] if unmapped else [])]]
        stamped = sum(outcome.stamped.values()) if outcome else 0
        failed = outcome.failed if outcome else 0
        counts = {**(dict(sorted(outcome.stamped.items())) if outcome else {}), "stamped": stamped,
                  "failed": failed, "remaining": after.stamp_count, "unmapped": after.not_mapped}
        tables = {"remaining": [{"table": k.split(" ")[0], "company": k.split(" ")[1], "rows": n}
                                for k, n in after.per_company().items()],
                  "unmapped": after.unmapped_table()}
        if outcome and outcome.stop.is_set():
            checks.append(Check(
                "fault threshold", StepStatus.FAILED,
                f"{failed} rows failed, more than bootstrap.max_failed_rows ({outcome.limit}); stopped with "
                f"{after.stamp_count} rows left. First errors: " + " | ".join(outcome.errors[:3]),
                fix=f"read {FAILED_CSV} for each failed row and its error, fix the cause, then run "
                    "bootstrap-apply again (it picks up where it stopped)", doc=BOOTSTRAP_DOC))
            return self.result(StepStatus.FAILED,
                               f"stopped after {failed} failed rows (limit {outcome.limit}); "
                               f"{stamped} rows stamped, {after.stamp_count} left; see {FAILED_CSV}",
                               checks=checks, tables=tables, counts=counts, evidence_files=files)
        if after.stamp_count:
            checks.append(Check("rows stamped", StepStatus.FAILED,
                                f"{after.stamp_count} mapped rows still have no company ({failed} failed)",
                                fix=f"read {FAILED_CSV}, fix the cause, and run bootstrap-apply again"))
        else:
            checks.append(Check("rows stamped", StepStatus.PASSED,
                                f"{stamped} rows stamped; no mapped row is left without a company"))
        status = worst(checks)
        left = after.stamp_count
        summary = (f"{left} rows still without company; see {FAILED_CSV}" if left else
                   f"stamped {stamped} rows" + (f"; {after.not_mapped} unmapped rows stay without company"
                                                if after.not_mapped else ""))
        return self.result(status, summary, checks=checks, tables=tables, counts=counts, evidence_files=files)


def live_maps(ctx: StepContext) -> list[str]:
    """The maps over the tables to stamp (`bootstrap.tables`) that are live (they would send each
    stamped row to F&O)."""
    params, _, admin = environment(ctx)
    tables = set(params.bootstrap.tables)
    names = [m.name for m in catalog.table_maps() if m.dataverse_table in tables]
    return sorted(n for n, s in admin.map_states(names).items() if s.state in LIVE_MAP_STATES)


def _refuse_live(ctx: StepContext, state: BootstrapState) -> None:
    live = live_maps(ctx)
    if live and state.stamp_count:
        raise StepError(f"{', '.join(live)} run: each row stamped now would go to F&O at once, one by one, "
                        "before the plan says how the data moves (the bootstrap comes \"before you enable "
                        "dual-write\"). Fix: run the stop-maps step (or Stop these maps), then "
                        "bootstrap-apply")


@register
class StopMaps(Step):
    """Stop the live maps over the tables the bootstrap stamps, while it has rows to stamp.

    The LCS setup of a new F&O enables the table maps for live synchronization (new-existing), and
    a re-run may find them running: the company data must be in place "before you enable
    dual-write", and the plan then decides how each map's data moves (initial sync, or migration
    and skip). Only Running maps can be stopped; a Paused or Resuming map is refused with the fix.
    Done when nothing is left to stamp, or no such map runs.

    Example:
        StopMaps().execute(ctx).summary → "stopped Customers V3 (accounts), Customers V3 (contacts)"
        >>> StopMaps.name
        'stop-maps'
    """

    name = "stop-maps"
    title = "Stop the table maps of the tables to bootstrap"
    doc_url = BOOTSTRAP_DOC

    def check(self, ctx: StepContext) -> Finding:
        _, _, admin = environment(ctx)
        live = live_maps(ctx)
        # Reading every row without a company is the expensive part: only when a map is live.
        stamps = 0
        if live:
            state = read_state(ctx)
            state.close()
            stamps = state.stamp_count
        live = live if stamps else []
        states = admin.map_states(live)
        busy = [f"{n} is {states[n].state}" for n in live if states[n].state != MapState.RUNNING]
        if busy:
            raise StepError(f"{'; '.join(busy)}: only Running maps can be stopped. Fix: resume a Paused map "
                            "(catch up) and wait until it runs, then run this step again")
        return Finding(not live, f"stop {', '.join(live)} before stamping {stamps} rows" if live
                       else "no live map over the tables to stamp", todo=live)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        _, _, admin = environment(ctx)
        admin.stop(finding.todo)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        _, _, admin = environment(ctx)
        stopped: list[str] = finding.todo
        states = admin.map_states(stopped)
        off = {n: states[n].state == MapState.NOT_RUNNING for n in stopped}
        checks = [Check(n, StepStatus.PASSED if off[n] else StepStatus.FAILED,
                        states[n].state, fix="" if off[n] else "stop it (Stop)",
                        doc=BOOTSTRAP_DOC) for n in stopped]
        summary = (f"stopped {', '.join(stopped)}: the plan runs them again after the bootstrap" if stopped
                   else "no live map over the tables to stamp")
        return self.result(worst(checks), summary, checks=checks)
