import numpy as np

from cirrus_airflow.datasets import synthetic_criteo, write_synthetic_criteo
from cirrus_airflow.formats import criteo
from cirrus_airflow.storage import Storage


def test_output_depends_only_on_rows_and_seed(tmp_path):
    storage = Storage()
    a = write_synthetic_criteo(storage, str(tmp_path / "a.tsv"), rows=70_000, seed=3)
    b = write_synthetic_criteo(storage, str(tmp_path / "b.tsv"), rows=70_000, seed=3)
    c = write_synthetic_criteo(storage, str(tmp_path / "c.tsv"), rows=70_000, seed=4)
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()
    assert (tmp_path / "a.tsv").read_bytes() != (tmp_path / "c.tsv").read_bytes()
    assert a["rows"] == b["rows"] == c["rows"] == 70_000
    # A smaller data set is a prefix of a larger one with the same seed.
    small = write_synthetic_criteo(storage, str(tmp_path / "s.tsv"), rows=1000, seed=3)
    assert (tmp_path / "a.tsv").read_bytes().startswith((tmp_path / "s.tsv").read_bytes())
    assert small["bytes"] < a["bytes"]


def test_rows_look_like_criteo_and_parse_cleanly(tmp_path):
    storage = Storage()
    for dialect in ("tsv", "csv"):
        path = tmp_path / f"d.{dialect}"
        write_synthetic_criteo(storage, str(path), rows=20_000, seed=1, dialect=dialect)
        data = path.read_bytes()
        sniffed = criteo.sniff(data[:4096], str(path))
        assert sniffed.header == (dialect == "csv")
        block = criteo.parse_block(data, sniffed, first_line=1, skip_header=sniffed.header, hash_seed=0)
        assert len(block.rows) == 20_000 and not len(block.rejected)
        assert 0.2 < block.rows.labels.mean() < 0.3
        missing = np.isnan(block.rows.integers).mean(axis=0)
        assert missing.max() > 0.1 and missing.min() == 0.0
        assert (block.rows.integers[~np.isnan(block.rows.integers)] < 0).any()


def test_tokens_are_eight_hex_digits_and_popularity_is_skewed():
    table = next(synthetic_criteo(50_000, seed=0))
    col = table.column("C1").drop_null().to_pylist()
    assert all(len(t) == 8 and int(t, 16) >= 0 for t in col[:1000])
    _, counts = np.unique(col, return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[: max(1, len(top) // 100)].sum() > 0.1 * len(col)
