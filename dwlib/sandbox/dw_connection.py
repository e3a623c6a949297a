"""The dual-write runtime's connection: Power Platform integration, Configure and Apply Solution,
Link (the connection and its legal entities), adding and removing legal entities, Reset link.

At most 250 legal entities in the connection, initial writes for at most 40 (`dw_limits`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from dwlib import catalog

from . import dw_records, profiles
from .dw_maps import MapActions
from .dw_runtime import COMPANIES_MAP, DISPLAY, DualWriteError
from .schema import ENTITIES
from .store import utcnow


class ConnectionActions(MapActions):
    """The LCS and Environment details actions on the link and the connection (see the module)."""

    # --- Power Platform integration and the connection ------------------------------------------

    def setup_power_platform_integration(self) -> dict[str, str]:
        """LCS: Power Platform Integration > Setup. Links this Dataverse to the F&O environment."""
        link = {
            "Url": self.finops_url,
            "TenantId": self.settings.tenant_id,
            "Id": self.settings.finops_environment_id,
        }
        self.store.kv_set("pp_link", link)
        return link

    def configure(self) -> dict[str, Any]:
        """LCS: Dual-write application > Configure — installs the dual-write solutions and app users
        in Dataverse and applies the solutions (the table maps appear)."""
        if self.pp_link() is None:
            raise DualWriteError(
                "Power Platform Integration is not set up for this environment (Dataverse answers "
                "0x80048d0b 'Dataverse instance isn't integrated with finance and operations'): in LCS, "
                "Environment details > Power Platform Integration > Setup first.",
                409,
            )
        with self.store.transaction():
            added = profiles.install_dual_write_solutions(self.store)
            self.apply_solutions()
        return {"solutionsAdded": added, "maps": len(catalog.table_maps())}

    def apply_solutions(self) -> int:
        """Dual-write workspace: Apply Solution — the catalogue's maps appear in Dataverse."""
        with self.store.transaction():
            for m in catalog.table_maps():
                dw_records.write_entity_map(self.store, self.effective_map(m.name))
            conn = self.connection()
            if conn is not None:
                conn["solutionsApplied"] = True
                self.store.kv_set("dw.connection", conn)
            self.store.kv_set("dw.solutions_applied", True)
        return len(catalog.table_maps())

    def _finops_legal_entities(self) -> dict[str, dict[str, Any]]:
        return {r["LegalEntityId"].lower(): r for r in self.store.find(ENTITIES["LegalEntities"], {})}

    def _check_companies(self) -> None:
        """Companies with one name, or a blank name, make saving the connection set fail
        (initial-setup troubleshooting: "multiple legal entities/companies with the same name")."""
        seen: set[str] = set()
        for row in self.store.find(ENTITIES["cdm_companies"], {}):
            name = (row.get("cdm_name") or "").strip().lower()
            if not name or name in seen:
                raise DualWriteError(
                    "Saving connection set failed! An item with the same key has already been added.", 409
                )
            seen.add(name)

    def _companies_for(self, codes: Iterable[str]) -> list[str]:
        known = self._finops_legal_entities()
        wanted = list(dict.fromkeys(c.strip() for c in codes if c.strip()))
        missing = [c for c in wanted if c.lower() not in known]
        if missing:
            raise DualWriteError(
                f"legal entities {missing} do not exist in finance and operations "
                f"(it has {', '.join(sorted(r['LegalEntityId'] for r in known.values()))})",
                404,
            )
        return [known[c.lower()]["LegalEntityId"] for c in wanted]

    def _live_limit(self, count: int) -> None:
        limit = self.limits().live_sync_legal_entities
        if count > limit:
            raise DualWriteError(
                f"Live synchronization supports up to {limit} legal entities; the connection would have "
                f"{count}. Remove legal entities you don't need (sync-limits).",
                409,
            )

    def link(
        self, legal_entities: Iterable[str] | None = None, *, start_maps: bool | None = None
    ) -> dict[str, Any]:
        """LCS: Link to Power Platform environment — the connection with its legal entities.

        `legal_entities` defaults to every F&O legal entity ("the dual-write connection is created
        for all legal entities"); `start_maps` defaults to what the setup guidance says for the
        scenario (maps live for a new, empty F&O with DAT: profiles new-new and new-existing).
        Linking creates no `cdm_companies` row: the Legal entities (cdm_companies) map brings the
        companies ("Enable the Cdm_companies table map. This synchronizes companies from the Finance
        and Operations app to Dataverse", bootstrap FAQ), so starting the maps runs that map with its
        initial sync and the others skipping it (a new F&O has no other data to copy).
        """
        if not self.store.kv_get("dw.solutions_applied", False):
            self.configure()
        codes = self._companies_for(
            legal_entities
            if legal_entities is not None
            else [r["LegalEntityId"] for r in self._finops_legal_entities().values()]
        )
        self._live_limit(len(codes))
        self._check_companies()
        with self.store.transaction():
            old = self.connection()
            conn = {
                "cid": old["cid"] if old else str(uuid.uuid4()),
                "cname": old["cname"]
                if old
                else f"{self.settings.organization_id}-{self.settings.finops_environment_id}",
                "legalEntities": codes,
                "solutionsApplied": True,
                "linkedOn": utcnow(),
                "finopsUrl": self.finops_url,  # the environment linked: a move leaves it behind
            }
            self.store.kv_set("dw.connection", conn)
            dw_records.set_partitions(self.store, codes)
        if start_maps is None:
            start_maps = self.settings.profile in ("new-new", "new-existing")
        if start_maps:
            companies = catalog.dependency_order([COMPANIES_MAP])
            self.run(companies, initial_sync=True)
            others = [m.name for m in catalog.table_maps() if m.name not in companies]
            self.run(catalog.dependency_order(others, include_dependencies=False), initial_sync=False)
        return conn

    def _busy(self, states: Iterable[str], doing: str) -> None:
        for m in catalog.table_maps():
            state = self.map_record(m.name)["state"]
            if state in states:
                raise DualWriteError(
                    f"{doing} failed: table map '{m.name}' is {DISPLAY[state]}"
                    f"{' (initial writes)' if state == 'Initializing' else ''}; "
                    "try again when it has finished.",
                    409,
                )

    def add_legal_entities(
        self, codes: Iterable[str], *, skip_initial_writes: bool = False
    ) -> dict[str, Any]:
        """Environment details > Legal entities > Add legal entity.

        Unless skipped (or the list grows beyond 40), running and paused maps re-run the initial
        write for the new legal entities (jobs in the background).
        """
        conn = self._need_connection()
        new = [
            c
            for c in self._companies_for(codes)
            if c.lower() not in {x.lower() for x in conn["legalEntities"]}
        ]
        self._busy(("Initializing",), "Adding legal entities")
        total = len(conn["legalEntities"]) + len(new)
        self._live_limit(total)
        self._check_companies()
        with self.store.transaction():
            conn["legalEntities"] = [*conn["legalEntities"], *new]
            self.store.kv_set("dw.connection", conn)
            dw_records.set_partitions(self.store, conn["legalEntities"])
        writes = bool(new) and not skip_initial_writes and total <= self.limits().initial_sync_legal_entities
        if writes:
            maps = [
                m.name
                for m in catalog.table_maps()
                if self.map_record(m.name)["state"] in ("Running", "Paused")
            ]
            # One after the other, in dependency order: the Legal entities map writes the new
            # companies' cdm_companies rows, which the company-specific maps after it need.
            self._spawn(self._initial_writes(catalog.dependency_order(maps, include_dependencies=False), new))
        return {"added": new, "legalEntities": conn["legalEntities"], "initialWrites": writes}

    def remove_legal_entity(self, code: str) -> dict[str, Any]:
        """Environment details > Legal entities > remove one (refused during initial writes or pause)."""
        conn = self._need_connection()
        self._busy(("Initializing", "Paused"), "Removing a legal entity")
        kept = [c for c in conn["legalEntities"] if c.lower() != code.lower()]
        if len(kept) == len(conn["legalEntities"]):
            raise DualWriteError(f"legal entity {code!r} is not in the dual-write connection", 404)
        conn["legalEntities"] = kept
        self.store.kv_set("dw.connection", conn)
        dw_records.set_partitions(self.store, kept)
        return conn

    def reset(self, *, force: bool = False, legal_entities: Iterable[str] = ()) -> dict[str, Any]:
        """Reset link: all maps must be stopped unless `force`; clears the dual-write configuration,
        maps, legal-entity mapping and initial sync history; the maps need Apply Solution again."""
        conn = self._need_connection()
        running = [m.name for m in catalog.table_maps() if self.map_record(m.name)["state"] != "NotRunning"]
        if running and not force:
            raise DualWriteError(
                "You must stop all dual-write maps before Reset link (or select Force "
                f"Reset); still running: {', '.join(running)}.",
                409,
            )
        codes = self._companies_for(legal_entities)
        with self.store.transaction():
            dw_records.clear_configuration(self.store)
            for key in (*self.store.kv_keys("dw.map."), *self.store.kv_keys("dw.job.")):
                self.store.conn.execute("DELETE FROM _kv WHERE k = ?", (key,))
            self.store.conn.execute("DELETE FROM dw_queue")
            self.store.kv_set("dw.solutions_applied", False)
            # The connection set is restored from the Power Platform integration setup (reset.md).
            conn.update(legalEntities=codes, solutionsApplied=False, resetOn=utcnow(),
                        finopsUrl=self.finops_url)
            self.store.kv_set("dw.connection", conn)
        return conn
