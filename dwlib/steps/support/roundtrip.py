"""The live round trip of verify: F&O → Dataverse → F&O through the Customers V3 (accounts) map.

1. Create a customer (an organization) with a unique account number in F&O company X.
2. Poll until Dataverse has the account, with `msdyn_company` = X ("within seconds", as the
   post-setup check of the guidance expects).
3. Change its name in Dataverse; poll until F&O shows the change.
4. Clean up: delete the customer in F&O, wait for the delete to reach Dataverse (or delete the
   account there), and check both sides hold nothing of it.

A round trip killed before its clean-up leaves its customer (and temporary group) behind:
`leftovers` finds them by their names (`DWRT-<8 hex>`, the temporary group's description) and
`clean_up_leftover` removes them the same way, so the next verify starts from a clean slate.

A company without customer groups (a new F&O) gets a temporary one, synced and deleted the same
way. Each stage is a `Check`; the first that fails names its direction. Clean-up always runs.

Example:
    trip = round_trip(session, "USMF", "10", company_id, timeout_s=300, poll_s=2)
    trip.ok, [c.name for c in trip.stages]
    (True, ['F&O → Dataverse', 'Dataverse → F&O', 'clean-up'])
    >>> poll(lambda: 42, timeout_s=1, poll_s=0.1)
    42
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from dwlib import catalog
from dwlib.clients.errors import ClientError, NotFoundError
from dwlib.vocab import StepStatus

from ..base import Check
from .reconcile import COMPANY_LOOKUP, company_clause

if TYPE_CHECKING:
    from dwlib.clients.session import Session

T = TypeVar("T")
ACCOUNTS = "Customers V3 (accounts)"
GROUPS = "Customer groups (msdyn_customergroups)"
PREFIX = "DWRT"  # account numbers of round-trip customers: DWRT-<8 hex>
_OURS = re.compile(rf"{PREFIX}-[0-9A-F]{{8}}")
TEMPORARY_GROUP = "dual-write round trip (temporary)"  # the description of a temporary customer group
LIVE_DOC = catalog.known_error("live-missing-reference-data").doc_url
F2D, D2F = "F&O → Dataverse", "Dataverse → F&O"


def poll(probe: Callable[[], T | None], *, timeout_s: float, poll_s: float) -> T | None:
    """`probe()` until it returns something other than None, or None once `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(poll_s)


@dataclass
class RoundTrip:
    """The outcome: one check per stage, the customer used, the direction that failed (if any)."""

    company: str
    account: str
    stages: list[Check] = field(default_factory=list)
    failed_direction: str = ""

    @property
    def ok(self) -> bool:
        return all(c.status == StepStatus.PASSED for c in self.stages)


def _fix(message: str, default: str) -> str:
    known = catalog.match_error(message, "live-sync")
    return known.remediation() if known else default


class _Trip:
    """One round trip against a session (see the module docstring)."""

    def __init__(self, session: Session, company: str, company_id: str, timeout_s: float,
                 poll_s: float, account: str | None = None) -> None:
        self.fo, self.dv = session.finops, session.dataverse
        self.company, self.company_id = company, company_id
        self.area = company.lower()
        self.timeout_s, self.poll_s = timeout_s, poll_s
        self.result = RoundTrip(company, account or f"{PREFIX}-{uuid.uuid4().hex[:8].upper()}")

    def _poll(self, probe: Callable[[], T | None]) -> T | None:
        return poll(probe, timeout_s=self.timeout_s, poll_s=self.poll_s)

    def _stage(self, name: str, ok: bool, evidence: str, fix: str = "") -> bool:
        self.result.stages.append(Check(name, StepStatus.PASSED if ok else StepStatus.FAILED, evidence,
                                        fix="" if ok else fix, doc="" if ok else LIVE_DOC))
        if not ok and name in (F2D, D2F) and not self.result.failed_direction:
            self.result.failed_direction = name
        return ok

    # --- reads ----------------------------------------------------------------------------------

    def _dv_account(self) -> dict[str, Any] | None:
        rows = list(self.dv.query(
            "accounts", select=["accountid", "name", "_msdyn_company_value"],
            filter=f"accountnumber eq '{self.result.account}' and {company_clause(self.company_id)}"))
        return rows[0] if rows else None

    def _fo_customer(self) -> dict[str, Any] | None:
        try:
            return self.fo.get("CustomersV3", self._fo_key(), select=["CustomerAccount", "OrganizationName"])
        except NotFoundError:
            return None

    def _fo_key(self) -> dict[str, str]:
        return {"dataAreaId": self.area, "CustomerAccount": self.result.account}

    # --- stages ---------------------------------------------------------------------------------

    def group(self) -> tuple[str | None, bool]:
        """A customer group of the company in F&O (created temporarily when there is none);
        (None, False) when F&O refused to create one."""
        found = list(self.fo.query("CustomerGroups", select=["CustomerGroupId"], company=self.company,
                                   orderby="CustomerGroupId", top=1))
        if found:
            return found[0]["CustomerGroupId"], False
        group = self.result.account[-4:] + "RT"
        try:
            key = {"dataAreaId": self.area, "CustomerGroupId": group}
            self.fo.create("CustomerGroups", {**key, "Description": TEMPORARY_GROUP}, key=key)
        except ClientError as exc:
            self._stage(F2D, False, f"F&O refused the temporary customer group {group}: {exc}",
                        _fix(str(exc), f"check that the {GROUPS} map is Running"))
            return None, False
        return group, True

    def there(self, group: str) -> dict[str, Any] | None:
        """F&O → Dataverse: create the customer in F&O; the account must appear in Dataverse."""
        name = f"Dual-write round trip {self.result.account}"
        try:
            self.fo.create("CustomersV3", {**self._fo_key(), "PartyType": "Organization",
                                           "OrganizationName": name, "CustomerGroupId": group},
                           key=self._fo_key())
        except ClientError as exc:
            self._stage(F2D, False, f"F&O refused customer {self.result.account}: {exc}",
                        _fix(str(exc), f"check that the {ACCOUNTS} and {GROUPS} maps are Running"))
            return None
        started = time.monotonic()
        account = self._poll(self._dv_account)
        self._stage(F2D, account is not None,
                    f"account {self.result.account} of {self.company} in Dataverse after "
                    f"{time.monotonic() - started:.1f} s" if account else
                    f"account {self.result.account} did not appear in Dataverse with company "
                    f"{self.company} within {self.timeout_s:g} s",
                    f"check that the {ACCOUNTS} map is Running (not Paused) and its catch-up errors in "
                    "the dual-write workspace")
        return account

    def back(self, account: dict[str, Any]) -> None:
        """Dataverse → F&O: rename the account in Dataverse; F&O must show the new name."""
        name = f"Dual-write round trip {self.result.account} (changed in Dataverse)"
        try:
            self.dv.update("accounts", account["accountid"], {"name": name})
        except ClientError as exc:
            self._stage(D2F, False, f"Dataverse refused the change: {exc}",
                        _fix(str(exc), f"check the {ACCOUNTS} map and the dual-write plug-ins"))
            return
        started = time.monotonic()
        seen = self._poll(lambda: c if (c := self._fo_customer()) and c.get("OrganizationName") == name
                          else None)
        self._stage(D2F, seen is not None,
                    f"F&O shows the new name after {time.monotonic() - started:.1f} s" if seen else
                    f"F&O did not show the name changed in Dataverse within {self.timeout_s:g} s",
                    f"check that the {ACCOUNTS} map is Running and that F&O accepts the change "
                    "(DualWriteErrorLog with IsDebugMode)")

    def clean_up(self, group: str | None, stage: str = "clean-up", what: str = "") -> None:
        """Delete the customer (and a temporary group) in F&O; both sides must hold none of it.
        `stage` names the check, `what` what it says is gone (default: the customer)."""
        left: list[str] = []
        self._delete(self._fo_customer, lambda: self.fo.delete("CustomersV3", self._fo_key()),
                     self._dv_account, lambda a: self.dv.delete("accounts", a["accountid"]),
                     f"customer {self.result.account}", left)
        if group is not None:
            key = {"dataAreaId": self.area, "CustomerGroupId": group}
            self._delete(lambda: _get(lambda: self.fo.get("CustomerGroups", key)),
                         lambda: self.fo.delete("CustomerGroups", key),
                         lambda: _first(self.dv.query(
                             "msdyn_customergroups", select=["msdyn_customergroupid"],
                             filter=f"msdyn_groupid eq '{group}' and {company_clause(self.company_id)}")),
                         lambda g: self.dv.delete("msdyn_customergroups", g["msdyn_customergroupid"]),
                         f"customer group {group}", left)
        self._stage(stage, not left,
                    f"nothing of {what or self.result.account} is left in F&O or Dataverse" if not left
                    else "still present: " + "; ".join(left),
                    "delete what is listed by hand (F&O: Accounts receivable > Customers; Dataverse: "
                    "Accounts), then run verify again")

    def _delete(self, fo_row: Callable[[], Any], fo_delete: Callable[[], None],
                dv_row: Callable[[], Any], dv_delete: Callable[[Any], None], what: str,
                left: list[str]) -> None:
        try:
            if fo_row() is not None:
                fo_delete()
                # Live sync deletes the Dataverse row too; give it the usual time, then delete it.
                poll(lambda: True if dv_row() is None else None, timeout_s=self.timeout_s,
                     poll_s=self.poll_s)
            row = dv_row()
            if row is not None:
                dv_delete(row)
        except ClientError as exc:
            left.append(f"{what}: {exc}")
            return
        left += [f"{what} in {side}" for side, probe in (("F&O", fo_row), ("Dataverse", dv_row))
                 if probe() is not None]


def _get(read: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return read()
    except NotFoundError:
        return None


def _first(rows: Any) -> dict[str, Any] | None:
    return next(iter(rows), None)


@dataclass(frozen=True)
class Leftover:
    """What a round trip that never cleaned up (its run was killed) left in one company: its
    customer (F&O and/or Dataverse) and its temporary customer group, when it made one."""

    company: str
    account: str | None
    group: str | None

    def __str__(self) -> str:
        parts = [f"customer {self.account}" if self.account else "",
                 f"customer group {self.group}" if self.group else ""]
        return f"{' and '.join(p for p in parts if p)} in {self.company}"


def leftovers(session: Session, ids: dict[str, str]) -> list[Leftover]:
    """Round-trip customers (`DWRT-…`) and temporary groups still in F&O or Dataverse, per company
    (`ids`: company code → `cdm_companyid`): what earlier round trips left when they were killed."""
    found: dict[str, dict[str, set[str]]] = {}

    def note(company: str, kind: str, value: str) -> None:
        found.setdefault(company.upper(), {"accounts": set(), "groups": set()})[kind].add(value)

    for row in session.finops.query("CustomersV3", select=["CustomerAccount", "dataAreaId"],
                                    filter=f"CustomerAccount eq '{PREFIX}-*'", cross_company=True):
        if _OURS.fullmatch(str(row["CustomerAccount"])):
            note(row["dataAreaId"], "accounts", row["CustomerAccount"])
    codes = {cid: code for code, cid in ids.items()}
    for row in session.dataverse.query("accounts", select=["accountnumber", COMPANY_LOOKUP],
                                       filter=f"startswith(accountnumber,'{PREFIX}-')"):
        code = codes.get(row.get(COMPANY_LOOKUP) or "")
        if code and _OURS.fullmatch(str(row["accountnumber"])):
            note(code, "accounts", row["accountnumber"])
    for row in session.finops.query("CustomerGroups", select=["CustomerGroupId", "dataAreaId"],
                                    filter=f"Description eq '{TEMPORARY_GROUP}'", cross_company=True):
        note(row["dataAreaId"], "groups", row["CustomerGroupId"])
    out = []
    for company, kinds in sorted((c, k) for c, k in found.items() if c in ids):
        groups = set(kinds["groups"])
        for account in sorted(kinds["accounts"]):
            group = account[-4:] + "RT"  # the name `_Trip.group` gives a temporary group
            out.append(Leftover(company, account, group if group in groups else None))
            groups.discard(group)
        out += [Leftover(company, None, g) for g in sorted(groups)]
    return out


def clean_up_leftover(session: Session, leftover: Leftover, company_id: str, *, timeout_s: float,
                      poll_s: float) -> Check:
    """Delete what a killed round trip left (both sides, as its own clean-up would have)."""
    trip = _Trip(session, leftover.company, company_id, timeout_s, poll_s, leftover.account)
    trip.clean_up(leftover.group, stage="earlier round trip cleaned up", what=str(leftover))
    return trip.result.stages[-1]


def round_trip(session: Session, company: str, company_id: str, *, timeout_s: float,
               poll_s: float) -> RoundTrip:
    """Run the round trip in `company` (its `cdm_companyid` is `company_id`); clean-up always runs."""
    trip = _Trip(session, company, company_id, timeout_s, poll_s)
    temporary: str | None = None
    try:
        group, created = trip.group()
        temporary = group if created else None
        account = trip.there(group) if group is not None else None
        if account is not None:
            trip.back(account)
    finally:
        trip.clean_up(temporary)
    return trip.result
