"""F&O table validation: mandatory fields, allowed values and table relations, as Infolog lines.

One set of rules for every path that writes F&O rows: OData writes (`finops.py`), DMF package
imports (`dmf_import.py`) and the dual-write runtime's writes into F&O (`dw_mapping.py`, used by live
sync and initial sync). `problems` lists what F&O would refuse about a row; `validate` raises
it as F&O's OData write error ("Write failed for table row of type '…'. Infolog: …").

Example:
    >>> import tempfile, pathlib
    >>> store = Store(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
    >>> row = {"dataAreaId": "dat", "CustomerAccount": "C1", "PartyType": "Robot"}
    >>> [str(p) for p in problems(store, ENTITIES["CustomersV3"], row)]
    ["Error: Field 'Customer group' must be filled in.", "Error: The value 'Robot' in field 'Party type' \
is not valid: use Organization or Person."]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .odata import ODataError
from .schema import ENTITIES, Entity
from .store import Store

COMPANY = "dataAreaId"
SYSTEM_COMPANY = "dat"  # exists in every F&O environment, whether or not it is a legal entity
WRITE_FAILED = "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"
TABLES = {  # the AOT entity each public collection writes through (named in Infolog messages, DMF)
    "LegalEntities": "OMLegalEntity", "Currencies": "CurrencyEntity",
    "CustomerGroups": "CustCustomerGroupEntity", "PaymentTerms": "PaymTermEntity",
    "CustomersV3": "CustCustomerV3Entity", "VendorsV2": "VendVendorV2Entity",
    "DualWriteProjectConfigurations": "DualWriteProjectConfigurationEntity",
}
LABELS = {"CustomerAccount": "Customer account", "CustomerGroupId": "Customer group",
          "SalesCurrencyCode": "Currency", "PaymentTerms": "Terms of payment",
          "PaymentTermId": "Terms of payment", "LegalEntityId": "Company", "CurrencyCode": "Currency",
          "AccountingCurrency": "Accounting currency", "PartyType": "Party type"}


@dataclass(frozen=True)
class Reference:
    """A column whose value must exist in another entity set (an F&O table relation)."""

    column: str
    target: str
    target_column: str
    table_label: str  # the related table as the Infolog names it

    @property
    def same_company(self) -> bool:
        """Whether the related row must be in the row's own company (the target is per company)."""
        return COMPANY in ENTITIES[self.target].key


REFERENCES: dict[str, tuple[Reference, ...]] = {
    "LegalEntities": (Reference("AccountingCurrency", "Currencies", "CurrencyCode", "Currencies"),),
    "CustomerGroups": (Reference("PaymentTermId", "PaymentTerms", "Name", "Terms of payment"),),
    "CustomersV3": (
        Reference("CustomerGroupId", "CustomerGroups", "CustomerGroupId", "Customer groups"),
        Reference("SalesCurrencyCode", "Currencies", "CurrencyCode", "Currencies"),
        Reference("PaymentTerms", "PaymentTerms", "Name", "Terms of payment"),
    ),
}
REQUIRED = {"CustomersV3": ("CustomerGroupId",)}  # mandatory besides the key
CHOICES = {  # enum columns
    "CustomersV3": {"PartyType": ("Organization", "Person")},
    "DualWriteProjectConfigurations": {"IsDebugMode": ("No", "Yes"), "IsDelete": ("No", "Yes")},
}

# (related entity set, its column, value, company or None) → whether such a row exists
Exists = Callable[[Entity, str, Any, "str | None"], bool]


@dataclass(frozen=True)
class Problem:
    """One Infolog line about a row; `column` is the field it is about."""

    column: str
    message: str

    def __str__(self) -> str:
        return self.message


def label(column: str) -> str:
    """A field as F&O's messages name it.

    >>> label("CustomerGroupId"), label("Name")
    ('Customer group', 'Name')
    """
    return LABELS.get(column, column)


def table(ent: Entity) -> str:
    """The AOT entity that F&O's messages name for writes to `ent`.

    >>> table(ENTITIES["CustomersV3"])
    'CustCustomerV3Entity'
    """
    return TABLES.get(ent.name, ent.logical_name)


class References:
    """Checks that related rows exist in the store; `cache=True` remembers the rows it found.

    Only found rows are remembered, so a reference created later is seen (bulk writers such as
    DMF imports and initial syncs check the same few values for many rows).

    exists = References(store, cache=True); exists(ENTITIES["Currencies"], "CurrencyCode", "USD", None)
    """

    def __init__(self, store: Store, *, cache: bool = False) -> None:
        self.store = store
        self._found: set[tuple[str, str, str, str | None]] | None = set() if cache else None

    def __call__(self, ent: Entity, column: str, value: Any, company: str | None) -> bool:
        key = (ent.name, column, str(value).lower(), company)
        if self._found is not None and key in self._found:
            return True
        match = {column: value, **({COMPANY: company} if company is not None else {})}
        found = bool(self.store.find(ent, match, limit=1))
        if found and self._found is not None:
            self._found.add(key)
        return found


def problems(
    store: Store, ent: Entity, row: dict[str, Any], *, exists: Exists | None = None
) -> list[Problem]:
    """What F&O refuses about `row` of entity set `ent`, in order: mandatory fields, allowed values,
    the company, relations. Empty when F&O accepts it. `row` is the whole row as the write leaves
    it (an update: the existing row with the changes), so clearing a mandatory field is refused too.

    `exists` checks related rows (default: `References(store)`); see the module example.
    """
    out: list[Problem] = []
    for col in (*ent.key, *REQUIRED.get(ent.name, ())):
        if row.get(col) in (None, ""):
            out.append(Problem(col, f"Error: Field '{label(col)}' must be filled in."))
    for col, allowed in CHOICES.get(ent.name, {}).items():
        value = row.get(col)
        if value not in (None, "") and value not in allowed:
            out.append(Problem(col, f"Error: The value '{value}' in field '{label(col)}' is not valid: use "
                                    f"{' or '.join(allowed)}."))
    company = row.get(COMPANY)
    check = exists or References(store)
    if company not in (None, SYSTEM_COMPANY) and not check(ENTITIES["LegalEntities"], "LegalEntityId",
                                                           company, None):
        out.append(Problem(COMPANY, f"Error: Company '{company}' does not exist."))
    for ref in REFERENCES.get(ent.name, ()):
        value = row.get(ref.column)
        if value in (None, ""):
            continue
        if not check(ENTITIES[ref.target], ref.target_column, value, company if ref.same_company else None):
            out.append(Problem(ref.column, f"Warning: The value '{value}' in field '{label(ref.column)}' is "
                                           f"not found in the related table '{ref.table_label}'."))
    return out


def write_error(ent: Entity, infolog: str, status: int = 400) -> ODataError:
    """F&O's OData error for a refused write to `ent` (`infolog`: the Infolog lines).

    >>> write_error(ENTITIES["Currencies"], "Error: x.").message
    "Write failed for table row of type 'CurrencyEntity'. Infolog: Error: x."
    """
    return ODataError(status, f"Write failed for table row of type '{table(ent)}'. Infolog: {infolog}",
                      kind=WRITE_FAILED)


def infolog(found: list[Problem]) -> str:
    """The Infolog text of several problems, as F&O joins them.

    >>> infolog([Problem("a", "Error: x."), Problem("b", "Warning: y.")])
    'Error: x.; Warning: y.'
    """
    return "; ".join(p.message for p in found)


def validate(
    store: Store, ent: Entity, row: dict[str, Any], *, exists: Exists | None = None
) -> None:
    """Raise F&O's write error (`ODataError` 400) when `problems` finds any.

    validate(store, ENTITIES["CustomersV3"], {**existing, **changes})
    """
    found = problems(store, ent, row, exists=exists)
    if found:
        raise write_error(ent, infolog(found))
