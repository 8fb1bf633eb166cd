"""The preprocessing driver, with the real map tasks run in-process (InlineExecutor)."""

import json
from pathlib import Path

import numpy as np
import pytest

from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.formats.criteo import parse_block, sniff
from cirrus_airflow.preprocess import PreprocessConfig, PreprocessError, run_preprocess
from cirrus_airflow.shards import ShardReader, SparseRows, read_manifest
from cirrus_airflow.storage import Storage


@pytest.fixture(scope="module")
def clicks(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "clicks.tsv"
    write_synthetic_criteo(Storage(), str(path), rows=30_000, seed=2)
    return path


def _run(inputs, out, executor, **kw):
    config = PreprocessConfig(inputs=[str(i) for i in inputs], output=str(out), hash_bits=12, split_bytes=1 << 20,
                              workers=3, row_group_rows=1000, **kw)
    return run_preprocess(config, storage=Storage(), executor=executor)


def _all_rows(prefix, split):
    manifest = read_manifest(Storage(), str(prefix))
    parts = []
    for uri in manifest.shard_uris(str(prefix), split):
        with ShardReader(Storage(), uri) as reader:
            parts.append(reader.read_all())
    return SparseRows.concat(parts)


def test_every_row_lands_once_with_the_split_and_stats_recorded(clicks, tmp_path, inline_executor):
    summary = _run([clicks], tmp_path / "out", inline_executor)
    assert summary["rows_read"] == summary["rows_written"] == 30_000
    assert summary["rows_rejected"] == 0 and summary["rejected_by_reason"] == {}
    assert summary["train_rows"] + summary["test_rows"] == 30_000
    assert 0.17 < summary["test_rows"] / 30_000 < 0.23
    manifest = read_manifest(Storage(), str(tmp_path / "out"))
    assert manifest.feature_dim == 26 + 4096
    assert manifest.rows("train") == summary["train_rows"] and manifest.rows("test") == summary["test_rows"]
    stats = manifest.transform["numeric_stats"]
    # The merged statistics are those of the whole training split, computed here in one go.
    block = parse_block(clicks.read_bytes(), sniff(clicks.read_bytes()[:4096], "x"), first_line=1,
                        skip_header=False, hash_seed=0)
    assert sum(stats["count"]) + sum(stats["missing"]) == 13 * summary["train_rows"]
    train = _all_rows(tmp_path / "out", "train")
    assert len(train) == summary["train_rows"] and train.indices.max() < manifest.feature_dim
    assert abs(train.labels.mean() - block.rows.labels.mean()) < 0.02
    # Row groups are sized for one worker read.
    entry = manifest.shards["train"][0]
    assert entry["row_groups"] == -(-entry["rows"] // 1000)


def test_split_is_deterministic_and_independent_of_the_number_of_splits(clicks, tmp_path, inline_executor):
    a = _run([clicks], tmp_path / "a", inline_executor)
    config = PreprocessConfig(inputs=[str(clicks)], output=str(tmp_path / "b"), hash_bits=12,
                              split_bytes=1 << 22, workers=1, row_group_rows=1000)
    b = run_preprocess(config, storage=Storage(), executor=inline_executor)
    assert a["test_rows"] == b["test_rows"]
    ta, tb = _all_rows(tmp_path / "a", "test"), _all_rows(tmp_path / "b", "test")
    key = lambda r: sorted(map(tuple, np.split(r.indices, r.indptr[1:-1])))  # noqa: E731
    assert key(ta) == key(tb)


def test_rerun_replaces_output_without_stale_files(clicks, tmp_path, inline_executor):
    out = tmp_path / "out"
    _run([clicks], out, inline_executor)
    stale = out / "shards" / "part-00999.parquet"
    stale.write_bytes(b"old")
    first = sorted(p.name for p in (out / "shards").iterdir())
    again = _run([clicks], out, inline_executor)
    assert not stale.exists()
    assert sorted(p.name for p in (out / "shards").iterdir()) == [n for n in first if n != stale.name]
    assert again["rows_written"] == 30_000


def test_bad_rows_are_kept_aside_with_line_numbers(tmp_path, inline_executor):
    good = tmp_path / "good.tsv"
    write_synthetic_criteo(Storage(), str(good), rows=2000, seed=1)
    lines = good.read_bytes().decode().splitlines(keepends=True)
    lines[10] = "1\t2\t3\n"
    lines[500] = "7" + lines[500][1:]
    (tmp_path / "bad.tsv").write_text("".join(lines))
    summary = _run([tmp_path / "bad.tsv"], tmp_path / "out", inline_executor)
    assert summary["rows_read"] == 2000 and summary["rows_written"] == 1998
    assert summary["rejected_by_reason"] == {"bad_label": 1, "wrong_field_count": 1}
    rejected = [json.loads(line) for f in sorted((tmp_path / "out" / "rejected").iterdir())
                for line in f.read_text().splitlines()]
    assert {(r["line"], r["reason"]) for r in rejected} == {(11, "wrong_field_count"), (501, "bad_label")}
    assert all(r["source"] == str(tmp_path / "bad.tsv") for r in rejected)
    assert {r["text"] for r in rejected} >= {"1\t2\t3"}


def test_too_many_bad_rows_fail_naming_the_file_and_leave_no_manifest(tmp_path, inline_executor):
    good = tmp_path / "ok.tsv"
    write_synthetic_criteo(Storage(), str(good), rows=1000, seed=1)
    lines = good.read_bytes().decode().splitlines(keepends=True)
    bad = tmp_path / "bad.tsv"
    bad.write_text("".join("9" + line[1:] if i % 10 == 0 else line for i, line in enumerate(lines)))
    out = tmp_path / "out"
    _run([good], out, inline_executor)
    assert (out / "_manifest.json").exists()
    with pytest.raises(PreprocessError, match=r"worst is .*bad\.tsv with 100 rows rejected for bad_label"):
        _run([good, bad], out, inline_executor)
    assert not (out / "_manifest.json").exists()
    assert sum(len(f.read_text().splitlines()) for f in (out / "rejected").iterdir()) == 100
    assert not (out / "shards").exists() or not any((out / "shards").iterdir())


def test_folder_input_with_csv_and_tsv_files(tmp_path, inline_executor):
    folder = tmp_path / "in"
    write_synthetic_criteo(Storage(), str(folder / "a.tsv"), rows=1500, seed=1)
    write_synthetic_criteo(Storage(), str(folder / "b.csv"), rows=1000, seed=2, dialect="csv")
    summary = _run([folder], tmp_path / "out", inline_executor)
    assert summary["rows_written"] == 2500 and summary["rows_rejected"] == 0


@pytest.mark.parametrize("inputs, message", [
    (["missing.tsv"], "no such file, and no files under that path"),
    (["empty.tsv"], "the input is empty"),
    (["notcriteo.tsv"], "fields; Criteo rows have 40"),
])
def test_unusable_input_is_a_clear_error(tmp_path, inline_executor, inputs, message):
    (tmp_path / "empty.tsv").write_bytes(b"")
    (tmp_path / "notcriteo.tsv").write_text("1 2:1 3:1\n")
    with pytest.raises(PreprocessError, match=message):
        _run([tmp_path / i for i in inputs], tmp_path / "out", inline_executor)


@pytest.mark.parametrize("field, value, message", [
    ("hash_bits", 0, "hash_bits must be between 1 and 26"),
    ("normalize", "zscore", "normalize must be one of"),
    ("test_fraction", 1.0, r"test_fraction must be in \[0, 1\)"),
    ("format", "xml", "format must be one of"),
])
def test_parameters_are_validated_before_any_work(field, value, message):
    config = PreprocessConfig(inputs=["x"], output="y", **{field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()


SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "criteo-sample" / "criteo_sample.csv"


@pytest.mark.skipif(not SAMPLE.exists(), reason="../shared/data is not present")
def test_the_real_criteo_sample_preprocesses_completely(tmp_path, inline_executor):
    lines = SAMPLE.read_bytes().count(b"\n") + (not SAMPLE.read_bytes().endswith(b"\n"))
    summary = _run([SAMPLE], tmp_path / "out", inline_executor)
    assert summary["rows_read"] == summary["rows_written"] == lines - 1  # all but the header
    assert summary["rows_rejected"] == 0
    manifest = read_manifest(Storage(), str(tmp_path / "out"))
    assert manifest.rows("train") + manifest.rows("test") == lines - 1
    assert manifest.transform["numeric_stats"]["missing"][0] > 0  # I1 has blanks in the sample
