"""The company sub-procedure of the setup guidance for existing Dataverse data: "Create a new
company in the finance and operations app", then "Add the company to the dual-write connection
setup" (before the bootstrap and the initial sync).

The companies come from the parameters' `companies` (scenarios new-existing and
new-data-existing). Both steps converge: only missing companies are created or added, and a
re-run finds them in place. `run_state["companies_created"]` lists the companies of the run that
F&O holds, `run_state["companies_added"]` those in the connection (derived from the real state).

Example:
    >>> # params: companies: [{code: USMF, name: Contoso US, country: USA, currency: USD,
    >>> #                      customer_groups: ["30"]}]
    >>> # CreateCompany().execute(ctx)  → creates USMF in F&O LegalEntities and its customer
    >>> #                                 group 30 (needs confirmation)
    >>> # AddCompany().execute(ctx)     → Add legal entity USMF, skipping initial writes
    >>> CreateCompany.irreversible, AddCompany.irreversible
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dwlib.scenarios import GUIDE

from .base import Check, Finding, Status, Step, StepContext, StepError, StepResult, register
from .link import (
    LEGAL_ENTITIES_DOC,
    company_checks,
    environment,
    finops_legal_entities,
    limit_problem,
    linked_codes,
    require_in_finops,
    scope,
    worst,
)

if TYPE_CHECKING:
    from dwlib.clients.session import Session
    from dwlib.params import Company, Params


def _companies(params: Params) -> list[Company]:
    """The run's companies to create; StepError when the scenario needs some and none are given."""
    created = set(scope(params).created)
    chosen = [c for c in params.companies if c.code in created]
    if not chosen:
        raise StepError(f"scenario {params.scenario} creates a company in F&O for the existing Dataverse "
                        "data, but the parameters list none. Fix: add it under companies, e.g. "
                        "companies: [{code: USMF, name: Contoso US}] (and the code to legal_entities)")
    return chosen


def missing_groups(session: Session, companies: list[Company]) -> list[tuple[str, str]]:
    """(company, CustomerGroupId) of the parameters' `customer_groups` that F&O lacks (companies F&O
    lacks lack all of theirs).

    >>> # missing_groups(session, params.companies) → [('USMF', '30')] before create-company
    """
    out: list[tuple[str, str]] = []
    for c in companies:
        if not c.customer_groups:
            continue
        rows = session.finops.query("CustomerGroups", select=["CustomerGroupId"], company=c.code)
        have = {str(r["CustomerGroupId"]).lower() for r in rows}
        out += [(c.code, g) for g in c.customer_groups if g.lower() not in have]
    return out


def missing_currencies(session: Session, companies: list[Company]) -> list[str]:
    """The companies' accounting currencies F&O lacks (a new F&O has only DAT's): F&O refuses a
    legal entity whose currency is not in its Currencies table.

    >>> # missing_currencies(session, params.companies) → ['GBP', 'EUR'] in a new F&O
    """
    wanted = dict.fromkeys(c.currency.upper() for c in companies if c.currency)
    rows = session.finops.query("Currencies", select=["CurrencyCode"])
    have = {str(r["CurrencyCode"]).upper() for r in rows}
    return [code for code in wanted if code not in have]


def _currency_row(session: Session, code: str) -> dict[str, str]:
    """An F&O Currencies row for `code`, named as Dataverse names it when it has the currency, so
    that the Currencies map finds both sides alike."""
    rows = list(session.dataverse.query("transactioncurrencies", select=["currencyname"],
                                        filter=f"isocurrencycode eq '{code}'"))
    return {"CurrencyCode": code, "Name": str(rows[0].get("currencyname") or code) if rows else code}


@dataclass
class CompanyWork:
    """What create-company has to do: currencies, then companies, then customer groups to create."""

    companies: list[Company]
    groups: list[tuple[str, str]]
    currencies: list[str]


@register
class CreateCompany(Step):
    """Create the run's companies (legal entities) in F&O, with the customer groups the parameters
    give them (a new company has no reference data; Customers V3 needs a customer group) and, first,
    their accounting currencies when F&O lacks them; only the missing ones. Irreversible.

    Example:
        >>> # result = CreateCompany().execute(ctx)   # WAITING until confirmed, then PASSED
        >>> # result.checks[0].evidence  → "LegalEntities USMF 'Contoso US'"
        >>> CreateCompany.name
        'create-company'
    """

    name = "create-company"
    title = "Create the company in finance and operations"
    doc_url = f"{GUIDE}#new-existing"
    irreversible = True

    def check(self, ctx: StepContext) -> Finding:
        params, session, _ = environment(ctx)
        known = finops_legal_entities(session)
        chosen = _companies(params)
        missing = [c for c in chosen if c.code not in known]
        groups = missing_groups(session, chosen)
        currencies = missing_currencies(session, missing)
        todo = [f"create {c.code} '{c.name}' in F&O LegalEntities" for c in missing]
        todo += [f"customer group {g} in {code}" for code, g in groups]
        todo += [f"currency {code} in F&O Currencies" for code in currencies]
        return Finding(not todo, "; ".join(todo), todo=CompanyWork(missing, groups, currencies))

    def act(self, ctx: StepContext, finding: Finding) -> None:
        _, session, _ = environment(ctx)
        work: CompanyWork = finding.todo
        # Each create names its key: one that failed on the way (429, a lost connection) is settled
        # by looking the row up, so it is retried without ever making a second one.
        for code in work.currencies:
            session.finops.create("Currencies", _currency_row(session, code), key={"CurrencyCode": code})
        for company in work.companies:
            row = {"LegalEntityId": company.code, "Name": company.name}
            if company.country:
                row["AddressCountryRegionId"] = company.country.upper()
            if company.currency:
                row["AccountingCurrency"] = company.currency.upper()
            session.finops.create("LegalEntities", row, key={"LegalEntityId": company.code})
        for code, group in work.groups:
            key = {"dataAreaId": code.lower(), "CustomerGroupId": group}
            row = {**key, "Description": f"Customer group {group}"}
            session.finops.create("CustomerGroups", row, key=key)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, _ = environment(ctx)
        known = finops_legal_entities(session)
        chosen = _companies(params)
        checks = [_company_check(c, known.get(c.code), self.doc_url) for c in chosen]
        absent = missing_groups(session, [c for c in chosen if c.code in known])
        checks += [_groups_check(c, [g for code, g in absent if code == c.code])
                   for c in chosen if c.code in known and c.customer_groups]
        ctx.run_state["companies_created"] = [c.code for c in chosen if c.code in known]
        status = worst(checks)
        return self.result(status, f"companies in F&O: {', '.join(ctx.run_state['companies_created'])}"
                           if status != Status.FAILED else "a company is missing in F&O", checks=checks)


def _company_check(company: Company, row: dict[str, Any] | None, doc: str) -> Check:
    name = f"company {company.code} in F&O"
    if row is None:
        return Check(name, Status.FAILED, f"LegalEntities has no {company.code}",
                     fix="create it in F&O (Organization administration > Legal entities > New), then run "
                         "the step again", doc=doc)
    if row.get("Name") != company.name:
        return Check(name, Status.WARNING,
                     f"LegalEntities {company.code} is named '{row.get('Name')}', not '{company.name}'",
                     fix="it existed already: check it is the company meant for the Dataverse data, or "
                         "choose another code")
    return Check(name, Status.PASSED, f"LegalEntities {company.code} '{row.get('Name')}'")


def _groups_check(company: Company, absent: list[str]) -> Check:
    name = f"customer groups of {company.code}"
    if absent:
        return Check(name, Status.FAILED, f"CustomerGroups {', '.join(absent)} missing in {company.code}",
                     fix="create them in F&O (Accounts receivable > Setup > Customer groups), then run "
                         "the step again")
    groups = ", ".join(company.customer_groups)
    return Check(name, Status.PASSED, f"CustomerGroups {groups} in {company.code}")


@register
class AddCompany(Step):
    """Add the created companies to the dual-write connection, skipping initial writes. Irreversible.

    The bootstrap stamps the Dataverse rows with the company next, and the initial sync follows, so
    the initial writes are skipped here. Verified by the company's `cdm_company` row with its
    business unit and "<CODE> DW" owner team.

    Example:
        >>> # AddCompany().execute(ctx).checks[0].evidence
        >>> # "cdm_company USMF 'Contoso US': owner team 'USMF DW' in business unit 'USMF'"
        >>> AddCompany.name
        'add-company'
    """

    name = "add-company"
    title = "Add the company to the dual-write connection"
    doc_url = LEGAL_ENTITIES_DOC
    irreversible = True

    def check(self, ctx: StepContext) -> Finding:
        params, session, admin = environment(ctx)
        codes = [c.code for c in _companies(params)]
        require_in_finops(session, codes, "run the create-company step first")
        present = linked_codes(admin)
        problem = limit_problem(len(present | set(codes)), scope(params).initial_sync)
        if problem:
            raise StepError(problem)
        missing = [c for c in codes if c not in present]
        return Finding(not missing, f"add {', '.join(missing)} to the dual-write connection (skipping "
                       "initial writes)", todo=missing)

    def act(self, ctx: StepContext, finding: Finding) -> None:
        _, _, admin = environment(ctx)
        admin.add_legal_entities(finding.todo, skip_initial_writes=True)

    def verify(self, ctx: StepContext, finding: Finding) -> StepResult:
        params, session, admin = environment(ctx)
        codes = [c.code for c in _companies(params)]
        checks = company_checks(session, codes)
        ctx.run_state["companies_added"] = sorted(set(codes) & linked_codes(admin))
        status = worst(checks)
        return self.result(status, f"in the dual-write connection: {', '.join(codes)}"
                           if status != Status.FAILED else "a company is missing in Dataverse", checks=checks)
