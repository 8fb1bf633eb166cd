"""The tables one server process holds, and the stop flags workers watch.

Kept apart from the network code so that what a server *holds* (and what a checkpoint
or a shard has to carry) is visible in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ps_service.checkpoint import Snapshot, TableState
from ps_service.errors import PSError
from ps_service.tables import Table, TableSpec


class TableStore:
    """``shard`` of ``shards``: this process's place in a sharded group (0 of 1 alone)."""

    def __init__(self, *, max_reports: int = 1000, shard: int = 0, shards: int = 1) -> None:
        self._tables: dict[str, Table] = {}
        self._max_reports = max_reports
        self.shard = shard
        self.shards = shards
        self.stop_all = False

    def create(self, request: Mapping[str, Any]) -> tuple[Table, bool]:
        """The table and whether it is new: retried workers may create the same table again."""
        spec = TableSpec.from_request(request)
        if (spec.shard, spec.shards) != (self.shard, self.shards):
            raise PSError(
                f"this server is shard {self.shard} of {self.shards}, but the client addressed it as "
                f"shard {spec.shard} of {spec.shards} when creating table {spec.name!r}; connect with "
                "every address of the group, in the order the group printed them"
            )
        existing = self._tables.get(spec.name)
        if existing is None:
            table = self._tables[spec.name] = Table(spec, max_reports=self._max_reports)
            return table, True
        if existing.spec != spec:
            raise PSError(
                f"table {spec.name!r} already exists with a different spec "
                f"({'; '.join(existing.spec.differences(spec))}); "
                "use another name or the same parameters"
            )
        return existing, False

    def table(self, name: str) -> Table:
        table = self._tables.get(name)
        if table is None:
            known = ", ".join(sorted(self._tables)) or "none"
            raise PSError(f"no table named {name!r} (tables: {known}); create_table it first")
        return table

    def drop(self, name: str) -> None:
        """Free a finished run's table; its memory and its place in checkpoints go with it."""
        self.table(name)
        del self._tables[name]

    def stop(self, name: str | None) -> None:
        if name is None:
            self.stop_all = True
        else:
            self.table(name).stop = True

    def stop_requested(self, name: str | None) -> bool:
        """What a reply about ``name`` tells its worker: stop if the server or the table is stopped."""
        if self.stop_all:
            return True
        table = self._tables.get(name) if name is not None else None
        return table is not None and table.stop

    def total_updates(self) -> int:
        return sum(table.updates for table in self._tables.values())

    def status(self, reports_since: float | None = None) -> dict[str, Any]:
        return {name: table.status(reports_since) for name, table in self._tables.items()}

    def snapshot(self, finished_slots: list[dict[str, Any]]) -> Snapshot:
        """Copies of every table's state, taken between two requests so it is consistent."""
        states = []
        for table in self._tables.values():
            weights, slots = table.state()
            states.append(TableState(table.spec.to_json(), weights, slots, table.updates, list(table.reports)))
        return Snapshot(self.shard, self.shards, states, finished_slots)

    def restore(self, snapshot: Snapshot) -> None:
        for state in snapshot.tables:
            spec = TableSpec.from_json(state.spec)
            table = self._tables[spec.name] = Table(spec, max_reports=self._max_reports)
            table.load_state(state.weights, state.slots, state.updates, state.reports)
