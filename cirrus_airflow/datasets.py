"""Deterministic generators of the embedded data sets: Criteo-shaped click logs (the
demo), and ratings and LIBSVM vectors from hidden models, so that tests and benchmarks
on a fresh machine know what a trained model should reach.

Click rows look like Criteo's display-advertising logs - a 0/1 label, 13 heavy-tailed
integer counts, 26 categorical columns of 8-hex-digit tokens drawn from power-law
vocabularies, and missing values in both - and the label comes from a hidden
logistic model over them, so a trained model can be scored against a known truth.
The output depends only on (rows, seed): it is generated in fixed-size chunks, each
from its own seeded stream, whatever the size of the file.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from cirrus_airflow import hashing
from cirrus_airflow.formats.criteo import COLUMNS, NUM_CATEGORICAL, NUM_INTEGER
from cirrus_airflow.storage import Storage

_CHUNK_ROWS = 1 << 16
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_TARGET_CTR = 0.25


@dataclass(frozen=True)
class _HiddenModel:
    """The generating process, drawn once from the seed."""

    seed: int
    int_mu: np.ndarray
    int_sigma: np.ndarray
    int_shift: np.ndarray
    int_missing: np.ndarray
    int_weight: np.ndarray
    missing_weight: np.ndarray
    vocab: np.ndarray
    cat_missing: np.ndarray
    cat_scale: np.ndarray
    bias: float = 0.0

    @classmethod
    def draw(cls, seed: int) -> _HiddenModel:
        rng = np.random.default_rng([seed, 0x5EED])
        return cls(
            seed=seed,
            int_mu=rng.uniform(0.0, 4.0, NUM_INTEGER),
            int_sigma=rng.uniform(0.5, 1.8, NUM_INTEGER),
            int_shift=np.where(np.arange(NUM_INTEGER) == 1, 3, 0),  # like Criteo's I2, which goes to -3
            int_missing=rng.choice([0.0, 0.05, 0.2, 0.45], NUM_INTEGER),
            int_weight=rng.normal(0.0, 0.35, NUM_INTEGER),
            missing_weight=rng.normal(0.0, 0.3, NUM_INTEGER),
            vocab=np.round(np.exp(rng.uniform(np.log(3), np.log(200_000), NUM_CATEGORICAL))).astype(np.int64),
            cat_missing=rng.choice([0.0, 0.0, 0.1, 0.4], NUM_CATEGORICAL),
            cat_scale=rng.uniform(0.1, 0.6, NUM_CATEGORICAL),
        )

    def logits(self, ints: np.ndarray, int_missing: np.ndarray, cat_ids: np.ndarray) -> np.ndarray:
        z = (np.log1p(np.maximum(ints + self.int_shift, 0)) - self.int_mu) / self.int_sigma
        out = np.where(int_missing, self.missing_weight, z * self.int_weight).sum(axis=1)
        for c in range(NUM_CATEGORICAL):
            out += self.cat_scale[c] * _gaussian_of(cat_ids[:, c], hashing.derive_seed(self.seed, 1, c))
        return out + self.bias


def _gaussian_of(ids: np.ndarray, seed: int) -> np.ndarray:
    """A fixed standard-normal effect per category id, from its hash (Box-Muller)."""
    h = ids.astype(np.uint64)
    u1 = hashing.unit_interval(h, seed)
    u2 = hashing.unit_interval(h, seed + 1)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def _hex_tokens(values: np.ndarray) -> pa.Array:
    """8-hex-digit strings of uint32 values, built as one Arrow buffer."""
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    digits = _HEX[((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(0xF)).astype(np.intp)]
    offsets = np.arange(0, 8 * len(values) + 1, 8, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(digits.tobytes())])


def _features(model: _HiddenModel, rng: np.random.Generator, rows: int) -> tuple[np.ndarray, ...]:
    """Integer counts, their missing mask, and category ids (-1 where missing)."""
    ints = np.floor(np.exp(rng.normal(model.int_mu, model.int_sigma, (rows, NUM_INTEGER)))).astype(np.int64)
    ints -= (rng.random((rows, NUM_INTEGER)) < 0.02) * model.int_shift  # a few small negatives
    int_missing = rng.random((rows, NUM_INTEGER)) < model.int_missing
    # Power-law popularity: id = floor(vocab * u**3) puts most rows on few tokens.
    cat_ids = np.floor(model.vocab * rng.random((rows, NUM_CATEGORICAL)) ** 3).astype(np.int64)
    cat_ids[rng.random((rows, NUM_CATEGORICAL)) < model.cat_missing] = -1
    return ints, int_missing, cat_ids


def _chunk(model: _HiddenModel, index: int, rows: int) -> pa.Table:
    rng = np.random.default_rng([model.seed, index])
    ints, int_missing, cat_ids = _features(model, rng, rows)
    labels = rng.random(rows) < 1.0 / (1.0 + np.exp(-model.logits(ints, int_missing, cat_ids)))

    columns: list[pa.Array] = [pa.array(labels.astype(np.int8))]
    for j in range(NUM_INTEGER):
        columns.append(pa.array(ints[:, j], mask=int_missing[:, j]))
    for c in range(NUM_CATEGORICAL):
        token = hashing.fmix64(cat_ids[:, c].astype(np.uint64) ^ np.uint64(hashing.derive_seed(model.seed, 2, c)))
        tokens = _hex_tokens(token & np.uint64(0xFFFFFFFF))
        columns.append(pc.if_else(pa.array(cat_ids[:, c] < 0), pa.scalar(None, pa.string()), tokens))
    return pa.Table.from_arrays(columns, names=COLUMNS)


def _calibrated(seed: int) -> _HiddenModel:
    """The hidden model with its bias set so that about a quarter of rows are clicks."""
    model = _HiddenModel.draw(seed)
    base = model.logits(*_features(model, np.random.default_rng([seed, 0xCA1]), 20_000))
    lo, hi = -10.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(base + mid)))) > _TARGET_CTR:
            hi = mid
        else:
            lo = mid
    return _HiddenModel(**{**model.__dict__, "bias": (lo + hi) / 2})


def synthetic_criteo(rows: int, *, seed: int = 0) -> Iterator[pa.Table]:
    """The rows as Arrow tables of at most 65,536 rows each, in order."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    model = _calibrated(seed)
    for index, start in enumerate(range(0, rows, _CHUNK_ROWS)):
        # Always draw a whole chunk, so that a smaller data set is a prefix of a larger one.
        yield _chunk(model, index, _CHUNK_ROWS).slice(0, min(_CHUNK_ROWS, rows - start))


def write_synthetic_criteo(
    storage: Storage, uri: str, *, rows: int, seed: int = 0, dialect: str = "tsv"
) -> dict:
    """Write the data set as Criteo text: ``tsv`` (no header, like the full data set)
    or ``csv`` (with a header, like the public samples)."""
    if dialect not in ("tsv", "csv"):
        raise ValueError(f"dialect must be 'tsv' or 'csv', got {dialect!r}")
    sink = io.BytesIO()
    if dialect == "csv":
        sink.write((",".join(COLUMNS) + "\n").encode())
    for table in synthetic_criteo(rows, seed=seed):
        pacsv.write_csv(
            table,
            sink,
            pacsv.WriteOptions(
                include_header=False, delimiter="\t" if dialect == "tsv" else ",", quoting_style="none"
            ),
        )
    data = sink.getvalue()
    storage.write_bytes(uri, data)
    return {"uri": uri, "rows": rows, "bytes": len(data), "seed": seed, "dialect": dialect}


def synthetic_ratings(
    *, users: int, items: int, rows: int, rank: int = 4, noise: float = 0.25, seed: int = 0
) -> tuple[pa.Table, dict]:
    """Ratings from a hidden biased low-rank model, and the model's own held-out floor.

    rating = mean + user bias + item bias + <p_u, q_i> + noise, clipped to [0.5, 5]:
    a matrix factorisation of the right rank can reach an error close to ``noise``,
    which is what the returned ``truth`` says tests may expect. Users and items are
    drawn with a power law, as in real ratings, and ids are sparse numbers (like
    MovieLens), so that the mapping to dense indices is exercised.
    """
    if min(users, items, rows, rank) < 1:
        raise ValueError("users, items, rows and rank must all be at least 1")
    rng = np.random.default_rng([seed, 0x4A71])
    p = rng.normal(0.0, 0.6 / np.sqrt(rank), (users, rank))
    q = rng.normal(0.0, 0.6 / np.sqrt(rank), (items, rank))
    user_bias, item_bias = rng.normal(0.0, 0.3, users), rng.normal(0.0, 0.4, items)
    u = np.minimum((rng.pareto(1.2, rows) * users / 20).astype(np.int64), users - 1)
    i = np.minimum((rng.pareto(1.0, rows) * items / 50).astype(np.int64), items - 1)
    clean = 3.5 + user_bias[u] + item_bias[i] + np.einsum("nk,nk->n", p[u], q[i])
    rating = np.clip(clean + rng.normal(0.0, noise, rows), 0.5, 5.0)
    user_ids, item_ids = 1 + 7 * np.arange(users), 10 + 3 * np.arange(items)
    table = pa.table({
        "userId": pa.array(user_ids[u]), "movieId": pa.array(item_ids[i]),
        "rating": pa.array(np.round(rating, 2)), "timestamp": pa.array(1_600_000_000 + np.arange(rows)),
    })
    return table, {"noise": noise, "clean_rmse": float(np.sqrt(np.mean((np.clip(clean, 0.5, 5.0) - rating) ** 2)))}


def write_synthetic_ratings(storage: Storage, uri: str, *, users: int = 500, items: int = 2000, rows: int = 50_000,
                            rank: int = 4, noise: float = 0.25, seed: int = 0) -> dict:
    """Write ``synthetic_ratings`` as a MovieLens-style CSV (``userId,movieId,rating,timestamp``)."""
    table, truth = synthetic_ratings(users=users, items=items, rows=rows, rank=rank, noise=noise, seed=seed)
    sink = io.BytesIO()
    sink.write((",".join(table.column_names) + "\n").encode())
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    storage.write_bytes(uri, sink.getvalue())
    return {"uri": uri, "rows": rows, "bytes": sink.tell(), "seed": seed, **truth}


def write_synthetic_libsvm(storage: Storage, uri: str, *, rows: int = 20_000, features: int = 200, nnz: int = 12,
                           zero_based: bool = False, signed_labels: bool = True, seed: int = 0) -> dict:
    """Write LIBSVM text from a hidden sparse logistic model (binary features, like a9a).

    Labels are -1/+1 (LIBSVM's convention) or 0/1; indices 0- or 1-based.
    """
    rng = np.random.default_rng([seed, 0x5173])
    weights = rng.normal(0.0, 1.0, features)
    # Each row's features, sorted and distinct: the first ``nnz`` of a random permutation key.
    keys = rng.random((rows, features))
    chosen = np.sort(np.argpartition(keys, nnz, axis=1)[:, :nnz], axis=1)
    logit = weights[chosen].sum(axis=1) / np.sqrt(nnz)
    positive = rng.random(rows) < 1.0 / (1.0 + np.exp(-2.0 * logit))
    labels = np.where(positive, "+1" if signed_labels else "1", "-1" if signed_labels else "0")
    index = chosen + (0 if zero_based else 1)
    tokens = np.char.add(index.astype(str), ":1")
    lines = [" ".join([label, *row]) for label, row in zip(labels.tolist(), tokens.tolist())]
    data = ("\n".join(lines) + "\n").encode()
    storage.write_bytes(uri, data)
    return {"uri": uri, "rows": rows, "bytes": len(data), "features": features, "seed": seed,
            "positive_rate": float(positive.mean())}
