"""The dual-write catalogue: table maps, dependencies, limits, known errors, required solutions.

Data lives in YAML files next to this module; both the runbooks and the sandbox read it.

Example:
    >>> from dwlib import catalog
    >>> catalog.table_map("Customers V3 (accounts)").integration_key
    ('accountnumber', 'msdyn_company.cdm_companycode')
    >>> catalog.match_error("Error Exceeds the maximum partitions allowed for mapping DWM-1").fix[:31]
    'Remove legal entities from the '
"""

from .errors import KnownError, known_error, known_errors, match_error
from .maps import (
    CatalogError,
    ColumnMapping,
    Condition,
    Limits,
    TableMap,
    ValueMapError,
    dependency_order,
    limits,
    maps_named,
    parse_dataverse_filter,
    parse_finops_filter,
    related_maps,
    table_map,
    table_maps,
)
from .solutions import (
    AppUser,
    RequiredSolution,
    Requirements,
    app_users,
    packages,
    required_solutions,
    requirements,
    version_at_least,
)

__all__ = [
    "AppUser",
    "CatalogError",
    "ColumnMapping",
    "Condition",
    "KnownError",
    "Limits",
    "RequiredSolution",
    "Requirements",
    "TableMap",
    "ValueMapError",
    "app_users",
    "dependency_order",
    "known_error",
    "known_errors",
    "limits",
    "maps_named",
    "match_error",
    "packages",
    "parse_dataverse_filter",
    "parse_finops_filter",
    "related_maps",
    "required_solutions",
    "requirements",
    "table_map",
    "table_maps",
    "version_at_least",
]
