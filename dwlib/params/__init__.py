"""Typed run parameters: load a YAML file (plus overrides), validate everything, report all at once.

Two modules: `model` (the pydantic models: what the parameters are) and `load` (reading the YAML,
merging a sandbox's connection, and turning pydantic's errors into one clear `ParamsError`).
Callers import from `dwlib.params`, which re-exports what they use.

Every key is documented in `params/template.yaml`. Unknown or misspelt keys are errors with a
"did you mean" hint; every problem is reported in one `ParamsError`, each with its path (and line)
in the file. Secrets are references (`dwlib.secrets`), resolved only when used. A file naming a
sandbox (`sandbox: {dir: …}`) takes the URLs, CA bundle, client id and secret reference from that
directory's `connection.yaml` for every key it does not set itself.

Example:
    >>> p = load_params({
    ...     "scenario": "existing-existing",
    ...     "environments": {"tenant_id": "contoso.onmicrosoft.com",
    ...                      "dataverse_url": "https://contoso.crm.dynamics.com/",
    ...                      "finops_url": "https://contoso.operations.dynamics.com"},
    ...     "auth": {"client_id": "11111111-2222-3333-4444-555555555555",
    ...              "client_secret": "env:DW_CLIENT_SECRET"},
    ...     "legal_entities": ["usmf"],
    ... })
    >>> p.environments.dataverse_url, p.legal_entities
    ('https://contoso.crm.dynamics.com', ['USMF'])
    >>> p.environments.authority_url
    'https://login.microsoftonline.com/contoso.onmicrosoft.com'
    >>> p.auth.client_secret
    SecretRef('env:DW_CLIENT_SECRET')
"""

from .load import (
    PARAM_KEYS,
    ParamsError,
    load_params,
    log,
    notebook_parameters,
    read_text,
    read_yaml,
    said,
    scenario_problem,
    validation_problems,
)
from .model import GATE_COMMAND_REFUSED, Auth, Company, HttpOptions, Options, Params, ScenarioId

__all__ = [
    "GATE_COMMAND_REFUSED",
    "PARAM_KEYS",
    "Auth",
    "Company",
    "HttpOptions",
    "Options",
    "Params",
    "ParamsError",
    "ScenarioId",
    "load_params",
    "log",
    "notebook_parameters",
    "read_text",
    "read_yaml",
    "said",
    "scenario_problem",
    "validation_problems",
]
