"""The client workers, evaluators and the training driver use to reach the parameter server.

Keys are integer arrays: int32 (or narrower) arrays travel as int32, anything wider as
int64, so shard indices (int32) cost four bytes a key on the wire. Values are float32
of shape (len(keys), width); a 1-D array is taken as width 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ps_service.connection import Connection
from ps_service.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    Opcode,
    decode_array,
    decode_json,
    encode_json,
    encode_table_request,
)


class PSClient:
    """One connection to a parameter server; every reply updates :attr:`stop_requested`.

    Raises :class:`~ps_service.errors.PSError` with the server's message when a request
    is refused, :class:`~ps_service.errors.PSAuthError` when the token is missing or
    wrong, and :class:`~ps_service.errors.PSConnectionError` when the server cannot be
    reached or the connection breaks.
    """

    def __init__(
        self,
        address: str | tuple[str, int],
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self._connection = Connection(address, token, timeout=timeout, max_frame_bytes=max_frame_bytes)

    @property
    def address(self) -> str:
        return self._connection.address

    @property
    def stop_requested(self) -> bool:
        """True once a reply carried the stop bit: the server or this request's table was stopped."""
        return self._connection.stop_requested

    def create_table(
        self,
        name: str,
        size: int,
        width: int = 1,
        optimizer: str = "sgd",
        learning_rate: float = 0.1,
        **options: Any,
    ) -> dict[str, Any]:
        """Create ``name`` or confirm an identical one exists; returns ``{"created", "spec"}``.

        ``options`` are the optimizer's (``l2``, ``initial_accumulator``, ``eps``) and the
        initialiser's (``initializer="zeros"|"normal"``, ``init_scale``, ``seed``).
        """
        request = {"name": name, "size": size, "width": width, "optimizer": optimizer,
                   "learning_rate": learning_rate, **options}
        return self._connection.request(Opcode.CREATE_TABLE, [encode_json(request)], decode_json)

    def pull(self, name: str, keys: Any) -> np.ndarray:
        """The current weights of ``keys``, shape (len(keys), width), float32."""
        parts = encode_table_request(name, keys=as_keys(keys))
        return self._connection.request(Opcode.PULL, parts, decode_array)

    def push(self, name: str, keys: Any, grads: Any) -> None:
        """Send gradients; rows of repeated keys are summed before the optimizer step."""
        key_array = as_keys(keys)
        parts = encode_table_request(name, keys=key_array, values=as_values(name, grads, len(key_array)))
        self._connection.request(Opcode.PUSH, parts)

    def push_pull(self, name: str, keys: Any, grads: Any, next_keys: Any) -> np.ndarray:
        """Push this minibatch's gradients and pull the next one's weights in one round trip."""
        key_array, next_array = same_key_dtype(as_keys(keys), as_keys(next_keys))
        parts = encode_table_request(
            name, keys=key_array, values=as_values(name, grads, len(key_array)), next_keys=next_array
        )
        return self._connection.request(Opcode.PUSH_PULL, parts, decode_array)

    def get_table(self, name: str) -> np.ndarray:
        """Every row of the table, shape (size, width): for evaluation and export."""
        return self._connection.request(Opcode.GET_TABLE, encode_table_request(name), decode_array)

    def set_table(self, name: str, values: Any) -> None:
        """Overwrite every row (warm start); ``values`` must have the table's shape."""
        array = np.asarray(values, dtype=np.float32)
        parts = encode_table_request(name, values=as_values(name, array, len(array)))
        self._connection.request(Opcode.SET_TABLE, parts)

    def report(self, name: str, metric: str, value: float, count: int = 1, worker: str | int | None = None) -> None:
        """Record a metric (e.g. ``train_loss`` averaged over ``count`` examples) for table ``name``."""
        request = {"table": name, "name": metric, "value": float(value), "count": int(count), "worker": worker}
        self._connection.request(Opcode.REPORT, [encode_json(request)])

    def status(self) -> dict[str, Any]:
        return self._connection.request(Opcode.STATUS, [], decode_json)

    def stop(self, table: str | None = None) -> None:
        """Set the stop flag of one table, or of the whole server when ``table`` is None."""
        self._connection.request(Opcode.STOP, [encode_json({"table": table})])

    def shutdown(self) -> None:
        """Stop every worker and end the server process; this client is closed afterwards."""
        try:
            self._connection.request(Opcode.SHUTDOWN, [])
        finally:
            self.close()

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> PSClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def as_keys(keys: Any) -> np.ndarray:
    """Contiguous little-endian int32 if the keys fit the caller's 32-bit dtype, else int64."""
    array = np.asarray(keys)
    if array.ndim == 1 and array.size == 0:
        return np.empty(0, dtype="<i4")
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError(f"keys must be a 1-D array of integers, got dtype {array.dtype} and shape {array.shape}")
    narrow = array.dtype.itemsize < 4 or (array.dtype.itemsize == 4 and array.dtype.kind == "i")
    return np.ascontiguousarray(array, dtype="<i4" if narrow else "<i8")


def same_key_dtype(keys: np.ndarray, next_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One request carries one key width, so mixed widths are both widened."""
    if keys.dtype == next_keys.dtype:
        return keys, next_keys
    return keys.astype("<i8"), next_keys.astype("<i8")


def as_values(table: str, values: Any, rows: int) -> np.ndarray:
    """A contiguous float32 (rows, width) array; a 1-D array is one column."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or len(array) != rows:
        raise ValueError(
            f"values for table {table!r} must have one row per key: shape ({rows}, width), "
            f"got {np.shape(values)}"
        )
    return np.ascontiguousarray(array, dtype="<f4")
