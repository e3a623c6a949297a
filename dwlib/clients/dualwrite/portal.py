"""`PortalAdmin`: dual-write actions as portal gates (the default, supported way).

Dual-write has no public API for its actions, so each action is a *gate*: the exact instructions
for the consultant (where to click, with links built from the environment URLs) go to `notify`,
then the result is verified through documented reads, polling until it holds or `timeout_s`
passes. Headless, nobody reads the instructions: it waits for the verified state or fails saying
what is still missing.

Example:
    admin = PortalAdmin(session.dataverse, session.finops, notify=print, timeout_s=1800)
    admin.run(["Customers V3 (contacts)"], initial_sync=True, master="dataverse")
    >>> LCS
    'https://lcs.dynamics.com/V2'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from dwlib import catalog
from dwlib.vocab import MapState

from ..dataverse import DataverseClient
from ..finops import FinOpsClient
from .base import (
    DualWriteAdmin,
    DualWriteAdminError,
    InitialSyncDetails,
    Instruction,
    MapSnapshot,
    host,
    map_names,
    same_url,
)

DUAL_WRITE_UI = "https://dataintegrator.trafficmanager.net/dualWrite?axenv={host}"
LCS = "https://lcs.dynamics.com/V2"


class PortalAdmin(DualWriteAdmin):
    """Portal gates: instructions for the consultant, then verification through documented reads.

    `lcs_project_id` / `lcs_environment_id` make the LCS link point at the environment's page.
    """

    def __init__(
        self,
        dataverse: DataverseClient,
        finops: FinOpsClient,
        *,
        lcs_project_id: str = "",
        lcs_environment_id: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(dataverse, finops, **kwargs)
        self.lcs_project_id = lcs_project_id
        self.lcs_environment_id = lcs_environment_id

    def links(self) -> dict[str, str]:
        """Where the consultant clicks: LCS, the F&O Data management workspace, the dual-write UI."""
        fo = self.finops.environment_url
        lcs = (
            f"{LCS}/EnvironmentDetailsV3New/{self.lcs_project_id}?EnvironmentId={self.lcs_environment_id}"
            if self.lcs_project_id and self.lcs_environment_id
            else "https://lcs.dynamics.com"
        )
        return {
            "LCS environment details": lcs,
            "F&O Data management workspace": f"{fo}/?mi=DM_DataManagementWorkspaceMenuItem",
            "Dual-write": DUAL_WRITE_UI.format(host=quote(host(fo))),
        }

    def _gate(self, title: str, steps: list[str], links: Sequence[str], verify: str) -> None:
        every = self.links()
        self.notify(Instruction(title, steps, {k: every[k] for k in links}, verify))

    def initial_sync_details(self, name: str) -> InitialSyncDetails:
        state = self.map_states([name])[name]
        status = {MapState.RUNNING: "Completed", MapState.INITIALIZING: "Executing"}.get(
            state.state, "Unknown")
        return InitialSyncDetails(
            catalog.table_map(name).name,
            state.state,
            status,
            note="the error texts are shown only in the dual-write workspace: open the map, tab "
            "'Initial sync details' (top 5 errors), or Data management > Job history (FinOps job name = "
            "execution group id); look each up in dwlib.catalog.match_error",
        )

    def set_up_power_platform_integration(self) -> dict[str, Any]:
        fo = self.finops.environment_url
        self._gate(
            "Set up the Power Platform integration (LCS)",
            [
                f"Open the LCS Environment details page of {host(fo)}.",
                "Expand Power Platform Integration and select Setup.",
                "Choose the Dataverse environment (a new one from a template, or 'use a different Power "
                "Platform "
                f"environment': {self.dataverse.environment_url}), confirm, and wait for provisioning.",
            ],
            ["LCS environment details"],
            f"Dataverse reports integration with {fo}",
        )

        def check() -> list[str]:
            link = self.power_platform_link()
            if link is None:
                return ["RetrieveFinanceAndOperationsIntegrationDetails answers 0x80048d0b (not integrated)"]
            return (
                []
                if same_url(link.get("Url", ""), fo)
                else [f"Dataverse is linked to {link.get('Url')}, not {fo}"]
            )

        self._wait("Power Platform integration", check)
        return self.power_platform_link() or {}

    def _solutions_missing(self) -> list[str]:
        installed = {r["uniquename"].lower(): r.get("version") for r in self.dataverse.solutions()}
        missing = []
        for s in catalog.required_solutions():
            version = next((installed[n.lower()] for n in s.names if n.lower() in installed), None)
            if not s.satisfied_by(version):
                missing.append(
                    f"solution {s.uniquename}"
                    + (f" {s.required_version}+" if s.required_version else "")
                    + (f" (installed {version})" if version else " (not installed)")
                )
        return missing

    def link(self, legal_entities: Sequence[str]) -> list[str]:
        codes = [c.upper() for c in legal_entities]
        self._gate(
            "Configure dual-write and link the environments (LCS)",
            [
                f"On the LCS Environment details page of {host(self.finops.environment_url)}, expand Power "
                f"Platform "
                "Integration and select Dual-write application; review the terms and select Configure, then "
                "OK.",
                "Refresh until the setup succeeds (typically 30 minutes or less); fix any error it shows.",
                "Select Link to Power Platform environment (typically less than 5 minutes).",
                f"In the dual-write workspace keep these legal entities: {', '.join(codes)}; remove the "
                f"others.",
            ],
            ["LCS environment details", "Dual-write"],
            "dual-write solutions installed, table maps applied, and legal entities "
            f"{', '.join(codes)} in the connection (once a map's project shows them)",
        )

        def check() -> list[str]:
            missing = self._solutions_missing()
            if not self.applied_maps():
                missing.append("no table maps in Dataverse (Apply Solution)")
            missing += [f"legal entity {c} in the connection"
                        for c in self.connection_legal_entities().missing(codes)]
            return missing

        self._wait("Dual-write link", check)
        return list(self.connection_legal_entities().codes or ())

    def add_legal_entities(self, codes: Sequence[str], *, skip_initial_writes: bool = False) -> list[str]:
        wanted = [c.upper() for c in codes]
        self._gate(
            "Add legal entities to the dual-write connection",
            [
                "In F&O open Data management > Dual-write, then Environment details.",
                f"On the Legal entities tab select Add legal entity and add {', '.join(wanted)}.",
                ("Select" if skip_initial_writes else "Clear")
                + " 'Skip initial writes for newly added legal entities'"
                ", then Save.",
            ],
            ["F&O Data management workspace", "Dual-write"],
            f"legal entities {', '.join(wanted)} in the connection (PartitionMap of the map projects)",
        )
        self._wait(
            "Legal entities",
            lambda: [f"legal entity {c} in the connection"
                     for c in self.connection_legal_entities().missing(wanted)],
        )
        return list(self.connection_legal_entities().codes or ())

    def run(
        self,
        names: Sequence[str],
        *,
        initial_sync: bool = True,
        master: str = "dataverse",
        include_related: bool = True,
    ) -> dict[str, MapSnapshot]:
        _, before, todo = self._run_plan(names, include_related)
        if not todo:
            return before
        master_text = {"dataverse": "Dataverse", "finops": "Finance and Operations apps"}[master]
        selected = catalog.table_map(names[-1]).name
        self._gate(
            f"Run table map{'s' if len(todo) > 1 else ''} {', '.join(todo)}",
            [
                "In F&O open Data management > Dual-write (the table map list).",
                f"Select '{selected}' and select Run; in the dialog select Show related table map(s).",
                f"Keep these maps selected, in this order: {' → '.join(todo)}.",
                f"For each, set Master for initial sync to {master_text} and "
                + (
                    "keep Initial Sync selected."
                    if initial_sync
                    else "clear Initial Sync (skip initial sync)."
                ),
                "Select Run and wait until every map shows Running; on errors open 'Initial sync details'.",
            ],
            ["F&O Data management workspace", "Dual-write"],
            f"{', '.join(todo)} Running",
        )
        return self._wait_states("Run table maps", todo, MapState.RUNNING, before)

    def set_column_defaults(self, name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
        selected = catalog.table_map(name).name
        state = self.map_states([selected])[selected].state
        if state != MapState.NOT_RUNNING:
            raise DualWriteAdminError(
                f"'{selected}' is {state}: table mappings can be changed only when the map is stopped "
                "(Not running), otherwise the changes are not saved (customizing-mappings)",
                fix="stop the map (Stop in the table map list), set the defaults, then run it again with "
                "Initial Sync cleared",
            )
        wanted = {column.upper(): str(value) for column, value in defaults.items()}
        self._gate(
            f"Set default values of table map {selected}",
            [
                "In F&O open Data management > Dual-write (the table map list).",
                f"Select '{selected}' (it is Not running) to open its column mappings.",
                *(
                    f"Column {column}: select its map type, select Add transform, choose Default, "
                    f"enter the value '{value}'; select OK."
                    for column, value in wanted.items()
                ),
                "Select Save.",
            ],
            ["F&O Data management workspace", "Dual-write"],
            "the Default transforms in msdyn_dualwriteentitymaps: "
            + ", ".join(f"{c} = '{v}'" for c, v in wanted.items()),
        )

        def check() -> list[str]:
            have = {c.upper(): str(v) for c, v in self.column_defaults(selected).items()}
            return [
                f"{c} has default {have[c]!r}, expected {v!r}"
                if c in have
                else f"{c} has no Default transform"
                for c, v in wanted.items()
                if have.get(c) != v
            ]

        self._wait("Column defaults", check)
        return self.column_defaults(selected)

    def reset_link(self, legal_entities: Sequence[str]) -> None:
        codes = [c.upper() for c in legal_entities]
        self._gate(
            "Reset the dual-write link",
            [
                "In F&O open Data management > Dual-write; every table map shows Not running.",
                "Select Reset link. On Choose environment select Acknowledge Reset (check that the Power "
                f"Platform Link Dataverse Environment is {self.dataverse.environment_url}), then Next.",
                f"On Select legal entities select {', '.join(codes)}; then Next through Health check and "
                "Summary, and Finish.",
                "When the reset has finished, select Apply Solution to bring the table maps back.",
            ],
            ["F&O Data management workspace", "Dual-write"],
            "no project configuration names another Dataverse environment, and the table maps are applied",
        )
        self._wait("Reset link", lambda: self.stale_configuration()
                   + ([] if self.applied_maps() else ["no table maps in Dataverse (Apply Solution)"]))

    def _simple(
        self, action: str, button: str, names: Sequence[str], target: str, extra: str = ""
    ) -> dict[str, MapSnapshot]:
        maps = map_names(names)
        self._gate(
            f"{action} table maps {', '.join(maps)}",
            [
                "In F&O open Data management > Dual-write (the table map list).",
                f"Select {', '.join(repr(m) for m in maps)} and select {button}.{extra}",
            ],
            ["F&O Data management workspace", "Dual-write"],
            f"{', '.join(maps)} {target}",
        )
        return self._wait_states(f"{action} table maps", maps, target)

    def stop(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        return self._simple("Stop", "Stop", names, MapState.NOT_RUNNING)

    def pause(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        return self._simple("Pause", "Pause", names, MapState.PAUSED)

    def resume(self, names: Sequence[str]) -> dict[str, MapSnapshot]:
        return self._simple(
            "Resume", "Run", names, MapState.RUNNING, " Choose 'Catch up synchronization of queued records'."
        )
