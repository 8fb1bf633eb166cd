"""A trained model in storage: ``<run>/model/weights.npy``, ``<run>/model/model.json``
and ``<run>/model/transform/``.

The metadata carries the manifest's transformation and the input format it was fitted
on, and ``transform/`` the transformation's files (id mappings, bucket mask, scales),
so the model folder alone is enough to turn raw rows into features and score them.
"""

from __future__ import annotations

import io
import json

import numpy as np

from cirrus_airflow.storage import Storage, join

WEIGHTS_NAME = "weights.npy"
METADATA_NAME = "model.json"


def save_model(storage: Storage, model_uri: str, weights: np.ndarray, metadata: dict) -> None:
    """Weights first, metadata last: a model.json means the weights beside it are whole."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(weights, dtype=np.float32), allow_pickle=False)
    storage.write_bytes(join(model_uri, WEIGHTS_NAME), buf.getvalue())
    storage.write_text(join(model_uri, METADATA_NAME), json.dumps(metadata, indent=1, sort_keys=True))


def load_weights(storage: Storage, weights_uri: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(weights_uri)), allow_pickle=False)


def load_metadata(storage: Storage, model_uri: str) -> dict:
    return json.loads(storage.read_text(join(model_uri, METADATA_NAME)))
