"""The output of the driver: shards of a target size that are each a fair sample, a
separate test input, statistics equal to numpy's on the whole training split, and
reruns that write the same bytes."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cirrus_airflow import hashing
from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.formats.criteo import parse_block, sniff
from cirrus_airflow.numeric import log_counts
from cirrus_airflow.input_formats import input_format, transform_from_json
from cirrus_airflow.preprocess import PreprocessConfig, PreprocessError, run_preprocess
from cirrus_airflow.shards import SparseRows, read_manifest
from cirrus_airflow.storage import Storage
from cirrus_airflow.transforms.workspace import Workspace

ROWS = 20_000


@pytest.fixture(scope="module")
def sorted_clicks(tmp_path_factory):
    """Click rows sorted by label: every negative row, then every positive one."""
    root = tmp_path_factory.mktemp("raw")
    write_synthetic_criteo(Storage(), str(root / "clicks.tsv"), rows=ROWS, seed=4)
    lines = (root / "clicks.tsv").read_bytes().splitlines(keepends=True)
    lines.sort(key=lambda line: line[:1])
    (root / "sorted.tsv").write_bytes(b"".join(lines))
    return root / "sorted.tsv"


def _run(inputs, out, executor, **kw):
    params = {"hash_bits": 12, "split_bytes": 1 << 19, "workers": 3, "row_group_rows": 500, "shard_rows": 4000}
    config = PreprocessConfig(inputs=[str(i) for i in inputs], output=str(out), **{**params, **kw})
    return run_preprocess(config, storage=Storage(), executor=executor)


def _shard_tables(out, part):
    manifest = read_manifest(Storage(), str(out))
    return [pq.read_table(uri) for uri in manifest.shard_uris(str(out), part)]


def test_shards_have_the_target_size_and_each_is_a_fair_sample(sorted_clicks, tmp_path, inline_executor):
    summary = _run([sorted_clicks], tmp_path / "out", inline_executor)
    assert summary["rows_written"] == ROWS
    train = _shard_tables(tmp_path / "out", "train")
    assert len(train) == -(-summary["train_rows"] // 4000)
    sizes = [t.num_rows for t in train]
    assert sum(sizes) == summary["train_rows"]
    mean = summary["train_rows"] / len(train)  # no shard much over the target, all alike
    assert max(sizes) < 4000 * 1.1 and all(abs(size - mean) < 0.1 * mean for size in sizes)
    overall = np.concatenate([t.column("label").to_numpy() for t in train]).mean()
    for table in train:
        labels = table.column("label").to_numpy()
        assert abs(labels.mean() - overall) < 0.04  # the sorted input is mixed across every shard
        # ... and within it: the first and second halves of a shard look alike too.
        half = len(labels) // 2
        assert abs(labels[:half].mean() - labels[half:].mean()) < 0.06
    manifest = read_manifest(Storage(), str(tmp_path / "out"))  # row groups sized for one worker read
    assert all(e["row_groups"] == -(-e["rows"] // 500) for e in manifest.shards["train"])
    assert not (tmp_path / "out" / "_work").exists()


def test_a_rerun_writes_the_same_bytes_and_no_stale_files(sorted_clicks, tmp_path, inline_executor):
    _run([sorted_clicks], tmp_path / "a", inline_executor)
    _run([sorted_clicks], tmp_path / "b", inline_executor, shard_rows=2000)  # more shards first ...
    _run([sorted_clicks], tmp_path / "b", inline_executor)  # ... then the same run as "a" over it
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.name != "_manifest.json":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    manifest_a = read_manifest(Storage(), str(tmp_path / "a")).to_json()
    manifest_b = read_manifest(Storage(), str(tmp_path / "b")).to_json()
    manifest_a["source"], manifest_b["source"] = manifest_a["source"]["files"], manifest_b["source"]["files"]
    assert manifest_a == manifest_b


def test_numeric_statistics_equal_numpy_on_the_whole_training_split(sorted_clicks, tmp_path, inline_executor):
    _run([sorted_clicks], tmp_path / "out", inline_executor, normalize="standard", split_seed=9)
    stats = read_manifest(Storage(), str(tmp_path / "out")).transform["numeric_stats"]
    data = sorted_clicks.read_bytes()
    rows = parse_block(data, sniff(data[:4096], "x"), first_line=1, skip_header=False, hash_seed=0).rows
    train = hashing.unit_interval(rows.row_hash(), 9) >= 0.2
    x = log_counts(rows.integers[train]).astype(np.float32).astype(np.float64)  # as the rows carry them
    np.testing.assert_array_equal(stats["count"], (~np.isnan(x)).sum(axis=0))
    np.testing.assert_allclose(stats["sum"], np.nansum(x, axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["sum_sq"], np.nansum(x * x, axis=0), rtol=1e-9)
    np.testing.assert_array_equal(stats["min"], np.nanmin(x, axis=0))
    np.testing.assert_array_equal(stats["max"], np.nanmax(x, axis=0))


def test_a_separate_test_input(tmp_path, inline_executor):
    write_synthetic_criteo(Storage(), str(tmp_path / "train.tsv"), rows=6000, seed=1)
    write_synthetic_criteo(Storage(), str(tmp_path / "test.tsv"), rows=1500, seed=2)
    summary = _run([tmp_path / "train.tsv"], tmp_path / "out", inline_executor,
                   test_inputs=[str(tmp_path / "test.tsv")])
    assert (summary["train_rows"], summary["test_rows"]) == (6000, 1500)
    manifest = read_manifest(Storage(), str(tmp_path / "out"))
    assert manifest.split == {"method": "inputs", "test_files": [str(tmp_path / "test.tsv")]}
    stats = manifest.transform["numeric_stats"]
    assert stats["count"][0] + stats["missing"][0] == 6000  # statistics of the training input only
    test_labels = np.concatenate([t.column("label").to_numpy() for t in _shard_tables(tmp_path / "out", "test")])
    data = (tmp_path / "test.tsv").read_bytes()
    expected = parse_block(data, sniff(data[:4096], "x"), first_line=1, skip_header=False, hash_seed=0).rows
    assert sorted(test_labels.tolist()) == sorted(expected.labels.tolist())


def test_test_input_and_fraction_together_or_overlapping_are_refused(tmp_path, inline_executor):
    write_synthetic_criteo(Storage(), str(tmp_path / "a.tsv"), rows=100, seed=1)
    with pytest.raises(ValueError, match="either test_inputs or test_fraction"):
        _run([tmp_path / "a.tsv"], tmp_path / "out", inline_executor, test_inputs=["b"], test_fraction=0.1)
    with pytest.raises(PreprocessError, match="both a training input and a test input"):
        _run([tmp_path], tmp_path / "out", inline_executor, test_inputs=[str(tmp_path / "a.tsv")])


def test_a_failed_run_leaves_no_manifest_and_no_scratch_files(tmp_path, inline_executor):
    write_synthetic_criteo(Storage(), str(tmp_path / "a.tsv"), rows=2000, seed=1)
    _run([tmp_path / "a.tsv"], tmp_path / "out", inline_executor)
    with (tmp_path / "a.tsv").open("a") as f:
        f.write("1\t2\n" * 200)
    with pytest.raises(PreprocessError, match="max_rejected_fraction"):
        _run([tmp_path / "a.tsv"], tmp_path / "out", inline_executor)
    out = Path(tmp_path / "out")
    assert not (out / "_manifest.json").exists() and not (out / "_work").exists()
    assert not list((out / "shards").glob("*"))  # nothing that looks like a finished output
    assert list((out / "rejected").glob("*.jsonl"))


@pytest.mark.parametrize("params", [{}, {"min_count": 3, "missing": "impute", "normalize": "standard",
                                     "signed_hash": True, "crosses": [("C1", "C2")]}])
def test_tabular_input_is_parsed_once_and_its_shards_hold_what_prediction_computes(
        sorted_clicks, tmp_path, inline_executor, params):
    out = tmp_path / "out"
    summary = _run([sorted_clicks], out, inline_executor, **params)
    tasks = Counter(e["task"] for e in inline_executor.events)
    assert "preprocess.transform" not in tasks and tasks["preprocess.combine"] == summary["shards"]
    manifest = read_manifest(Storage(), str(out))
    transform = transform_from_json(manifest.transform).load(Workspace(Storage(), str(out)))
    data = sorted_clicks.read_bytes()
    parsed = input_format("criteo", {"hash_seed": 0}).parse(data, sniff(data[:4096], "x").to_json(), first_line=1,
                                                              skip_header=False)
    want = transform.apply(parsed.rows)
    got = SparseRows.concat([SparseRows.from_arrow(pq.read_table(uri))
                             for part in ("train", "test") for uri in manifest.shard_uris(str(out), part)])
    assert _sorted_rows(got) == _sorted_rows(want)


def _sorted_rows(rows: SparseRows) -> list[tuple]:
    width = len(rows.indices) // len(rows)
    indices, values = rows.indices.reshape(-1, width), rows.values.reshape(-1, width)
    return sorted(zip(rows.labels.tolist(), map(tuple, indices.tolist()), map(tuple, values.tolist())))


def test_rejected_rows_of_later_splits_are_numbered_from_their_file_start(tmp_path, inline_executor):
    write_synthetic_criteo(Storage(), str(tmp_path / "a.tsv"), rows=8000, seed=1)
    lines = (tmp_path / "a.tsv").read_bytes().splitlines(keepends=True)
    bad = [10, 3999, 7990]  # 1-based numbers of the lines made bad, in the first, middle and last splits
    for n in bad:
        lines[n - 1] = b"1\tnot a row\n"
    (tmp_path / "a.tsv").write_bytes(b"".join(lines))
    summary = _run([tmp_path / "a.tsv"], tmp_path / "out", inline_executor, split_bytes=1 << 18)
    assert summary["rows_rejected"] == 3 and summary["rows_written"] == 8000 - 3
    records = [json.loads(line) for path in sorted((tmp_path / "out" / "rejected").glob("*.jsonl"))
               for line in path.read_text().splitlines()]
    assert sorted(r["line"] for r in records) == bad
    assert all(r["text"] == "1\tnot a row" and r["reason"] == "wrong_field_count" for r in records)
    assert len({e["index"] for e in inline_executor.events if e["task"] == "preprocess.stats"}) >= 3
