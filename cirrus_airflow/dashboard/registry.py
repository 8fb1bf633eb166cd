"""Where the dashboard finds tuning runs: one small JSON file per task instance that ran a search.

The search itself writes only under its own output; the dashboard (in Airflow's API
server, another process and maybe another machine) learns which outputs to show from
this registry, which ``CirrusTuneOperator`` writes to before the search starts. It is a
folder, local or ``s3://``, set by ``[cirrus] dashboard_registry``
(``AIRFLOW__CIRRUS__DASHBOARD_REGISTRY``); the default is ``$AIRFLOW_HOME/cirrus/tuning-runs``,
which is right when the API server and the workers share a machine. With workers
elsewhere, point both at one S3 folder.

A run is named by a hash of its task instance (DAG, run, task, map index), so the operator's
extra link knows the dashboard address before anything is registered, and a retried task
keeps its page.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass

from cirrus_airflow.storage import Storage, StorageError, join, normalize

DEFAULT_AWS_CONN_ID = "aws_default"
URL_PREFIX = "/cirrus"  # where the plugin mounts the dashboard in Airflow's API server
_KEY = re.compile(r"[0-9a-f]{20}")


def registry_uri() -> str:
    """The registry folder from Airflow's configuration (``[cirrus] dashboard_registry``)."""
    from airflow.sdk import conf

    default = os.path.join(os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "cirrus", "tuning-runs")
    return normalize(conf.get("cirrus", "dashboard_registry", fallback=default) or default)


def registry_conn_id() -> str | None:
    """The AWS connection for an ``s3://`` registry (``[cirrus] dashboard_aws_conn_id``)."""
    from airflow.sdk import conf

    return conf.get("cirrus", "dashboard_aws_conn_id", fallback=DEFAULT_AWS_CONN_ID)


def run_key(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The dashboard's name for the search of one task instance."""
    text = json.dumps([dag_id, run_id, task_id, int(map_index)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class RunEntry:
    """One registered search: which task instance ran it, and where its output is."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    output: str
    aws_conn_id: str | None = DEFAULT_AWS_CONN_ID
    registered_at: float = 0.0

    @property
    def key(self) -> str:
        return run_key(self.dag_id, self.run_id, self.task_id, self.map_index)


def register(storage: Storage, registry: str, entry: RunEntry) -> str:
    """Record ``entry`` (again, on a retry: the same file); returns its URI."""
    uri = join(registry, f"{entry.key}.json")
    stamped = RunEntry(**{**asdict(entry), "registered_at": entry.registered_at or time.time()})
    storage.write_text(uri, json.dumps(asdict(stamped), sort_keys=True))
    return uri


def list_runs(storage: Storage, registry: str) -> list[RunEntry]:
    """Every registered search, newest first; unreadable or misnamed entries are skipped."""
    entries = []
    for uri in storage.list(registry):
        name = uri.rsplit("/", 1)[-1]
        if name.endswith(".json"):
            entry = find(storage, registry, name[: -len(".json")])
            if entry is not None:
                entries.append(entry)
    return sorted(entries, key=lambda e: e.registered_at, reverse=True)


def find(storage: Storage, registry: str, key: str) -> RunEntry | None:
    """The entry named ``key``, if it is one: its file must hold the task instance whose key
    it is named by, so a file cannot pass itself off as another task instance's search."""
    if not _KEY.fullmatch(key):
        return None
    try:
        doc = json.loads(storage.read_text(join(registry, f"{key}.json")))
        entry = RunEntry(dag_id=str(doc["dag_id"]), run_id=str(doc["run_id"]), task_id=str(doc["task_id"]),
                         map_index=int(doc["map_index"]), output=str(doc["output"]),
                         aws_conn_id=None if doc.get("aws_conn_id") is None else str(doc["aws_conn_id"]),
                         registered_at=float(doc.get("registered_at", 0.0)))
    except (StorageError, ValueError, TypeError, KeyError):
        return None
    return entry if entry.key == key else None
