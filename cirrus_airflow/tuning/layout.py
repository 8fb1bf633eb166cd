"""Where a search keeps its files under its output, and how another process asks it to stop.

Kept apart from the search itself (and light to import) because the dashboard, in
Airflow's API server, and ``cirrus-airflow tune kill`` need these and nothing else.
"""

from __future__ import annotations

import math
from typing import Any

from cirrus_airflow.storage import Storage, join, normalize

LIVE, RESULTS, KILL_FOLDER = "live.json", "results.json", "_kill"
RUNNING, DONE = "running", "done"  # a search's state in live.json


def request_kill(storage: Storage, output: str, trial_id: str | None = None) -> str:
    """Ask the search running under ``output`` to stop one configuration (None: all of it)."""
    output = normalize(output)
    if trial_id is not None and ("/" in trial_id or trial_id in ("", ".", "..", "all")):
        raise ValueError(f"not a configuration id: {trial_id!r}")
    uri = join(output, KILL_FOLDER, trial_id or "all")
    storage.write_text(uri, "")
    return uri


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity (a diverged loss) replaced by None, at any depth:
    JSON has no such numbers, and browsers and Starlette refuse Python's spelling of them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
