"""Checkpoints: every table's weights and optimizer state, written atomically to storage.

A checkpoint is one ``.npz`` file per server process (``shard-000-of-002.npz`` under the
checkpoint URI): a JSON header (format version, shard identity, table specs, update
counts, reports, finished worker slots) and the arrays, named ``t<i>.weights`` and
``t<i>.slot.<name>``. One object per shard keeps a write atomic on both backends: a
local file is renamed into place, an S3 PUT replaces the object whole, so a reader sees
the previous checkpoint or the new one, never a mix.

Taking a snapshot copies the arrays on the event loop (a memcpy, so no update can land
half in it); encoding and writing run in a thread while the server keeps serving.
"""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ps_service.errors import PSError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CheckpointError(PSError):
    """A checkpoint could not be written or read; the message names the URI."""


@dataclass
class TableState:
    spec: dict[str, Any]
    weights: np.ndarray
    slots: dict[str, np.ndarray]
    updates: int
    reports: list[dict[str, Any]]


@dataclass
class Snapshot:
    shard: int
    shards: int
    tables: list[TableState]
    finished_slots: list[dict[str, Any]] = field(default_factory=list)
    taken_at: float = field(default_factory=time.time)

    @property
    def updates(self) -> int:
        return sum(table.updates for table in self.tables)


def shard_uri(base: str, shard: int, shards: int) -> str:
    return f"{base.rstrip('/')}/shard-{shard:03d}-of-{shards:03d}.npz"


def encode(snapshot: Snapshot) -> bytes:
    header = {
        "format": FORMAT_VERSION, "shard": snapshot.shard, "shards": snapshot.shards,
        "taken_at": snapshot.taken_at, "finished_slots": snapshot.finished_slots,
        "tables": [{"spec": t.spec, "updates": t.updates, "reports": t.reports, "slots": sorted(t.slots)}
                   for t in snapshot.tables],
    }
    arrays: dict[str, np.ndarray] = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    for index, table in enumerate(snapshot.tables):
        arrays[f"t{index}.weights"] = table.weights
        for name, slot in table.slots.items():
            arrays[f"t{index}.slot.{name}"] = slot
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode(data: bytes, uri: str) -> Snapshot:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            header = json.loads(archive["header"].tobytes())
            if header.get("format") != FORMAT_VERSION:
                raise CheckpointError(
                    f"checkpoint {uri} has format {header.get('format')!r}; this server reads "
                    f"format {FORMAT_VERSION}: restore it with the ps_service version that wrote it"
                )
            tables = [
                TableState(
                    spec=entry["spec"], updates=int(entry["updates"]), reports=entry["reports"],
                    weights=archive[f"t{index}.weights"],
                    slots={name: archive[f"t{index}.slot.{name}"] for name in entry["slots"]},
                )
                for index, entry in enumerate(header["tables"])
            ]
            return Snapshot(header["shard"], header["shards"], tables, header["finished_slots"], header["taken_at"])
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"checkpoint {uri} is damaged or not a parameter-server checkpoint: {error}") from None


def write(snapshot: Snapshot, base: str) -> str:
    """Encode and store; returns the object's URI. Runs in a worker thread."""
    from cirrus_airflow.storage import Storage, StorageError

    uri = shard_uri(base, snapshot.shard, snapshot.shards)
    started = time.monotonic()
    data = encode(snapshot)
    try:
        Storage().write_bytes(uri, data)
    except (StorageError, OSError) as error:
        raise CheckpointError(f"cannot write checkpoint {uri}: {error}") from error
    log.info("checkpoint of %d tables (%d updates, %.1f MB) written to %s in %.2f s", len(snapshot.tables),
             snapshot.updates, len(data) / 1e6, uri, time.monotonic() - started)
    return uri


def read(base: str, shard: int, shards: int) -> Snapshot:
    """The checkpoint this shard wrote under ``base``; a clear error if it is missing or mismatched."""
    from cirrus_airflow.storage import Storage, StorageError

    storage = Storage()
    uri = shard_uri(base, shard, shards)
    try:
        data = storage.read_bytes(uri)
    except (StorageError, OSError) as error:
        try:
            present = [u.rsplit("/", 1)[-1] for u in storage.list(base) if u.endswith(".npz")]
        except (StorageError, OSError):
            present = []
        found = f"; it holds {', '.join(sorted(present))}" if present else "; no checkpoint was found there"
        raise CheckpointError(
            f"cannot restore shard {shard} of {shards} from {base}: {uri} is not readable ({error}){found}. "
            "Restore with the same --shards as the run that wrote it"
        ) from None
    snapshot = decode(data, uri)
    if (snapshot.shard, snapshot.shards) != (shard, shards):
        raise CheckpointError(
            f"checkpoint {uri} was written by shard {snapshot.shard} of {snapshot.shards}, "
            f"not shard {shard} of {shards}"
        )
    return snapshot
