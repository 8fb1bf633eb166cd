"""The checks every push, pull and set must pass before anything is applied.

Shared by the server's tables and by a sharded group's client, which must refuse a
request before any shard applies its part (a push refused by one shard but applied by
the others could not be taken back), with the same message a single server gives.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ps_service.errors import PSError

# Larger values would overflow float32 once squared (Adagrad, Adam) and poison their rows.
MAX_ABS_VALUE = 1e18
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _same(keys: np.ndarray) -> np.ndarray:
    return keys


def check_keys(table: str, keys: np.ndarray, rows: int, size: int,
               caller_keys: Callable[[np.ndarray], np.ndarray] = _same) -> None:
    """Every key in 0..rows-1; ``caller_keys`` maps a shard's local key back to the one sent."""
    if not len(keys):
        return
    # Viewed as unsigned, a negative key is huge: one reduction checks both ends.
    if keys.view(_UNSIGNED[keys.dtype.itemsize]).max() >= rows:
        bad = caller_keys(keys[(keys < 0) | (keys >= rows)][:1])[0]
        raise PSError(f"table {table!r} has {size} keys (0..{size - 1}); key {int(bad)} is out of range; "
                      "nothing was applied")


def check_values(table: str, keys: np.ndarray, values: np.ndarray, operation: str,
                 caller_keys: Callable[[np.ndarray], np.ndarray] = _same) -> None:
    """Refuse NaN, infinity and absurdly large values: any of them would poison the rows for good."""
    magnitudes = np.abs(values)
    if not magnitudes.max(initial=0.0) <= MAX_ABS_VALUE:  # NaN compares false, so it is caught
        bad = caller_keys(keys[~(magnitudes <= MAX_ABS_VALUE).all(axis=1)][:1])[0]
        raise PSError(f"{operation} to table {table!r} has a NaN, infinite or larger than {MAX_ABS_VALUE:g} "
                      f"value for key {int(bad)}; nothing was applied")


def check_width(table: str, width: int, keys: np.ndarray, values: np.ndarray) -> None:
    if values.shape != (len(keys), width):
        raise PSError(f"table {table!r} rows have width {width}; the push sent gradients of shape "
                      f"{values.shape} for {len(keys)} keys; nothing was applied")
