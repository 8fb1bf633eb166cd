"""What preprocessing accepts as input: files, lists, folders, globs (local and S3) and gzip text.

The map tasks run in-process (InlineExecutor) except where the S3 path is run for real:
a moto server reached through an Airflow connection, with the local Lambda runtime.
"""

import gzip
import json
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
from moto import mock_aws

from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.executor import ExecutorSettings
from cirrus_airflow.hooks import CirrusHook
from cirrus_airflow.preprocess import InputFile, PreprocessConfig, PreprocessError, plan_splits, run_preprocess
from cirrus_airflow.shards import ShardReader, SparseRows, read_manifest
from cirrus_airflow.storage import Storage, StorageError

CLI = str(Path(sys.executable).with_name("cirrus-airflow"))


def _write(path: Path, rows: int, seed: int, dialect: str = "tsv") -> Path:
    write_synthetic_criteo(Storage(), str(path), rows=rows, seed=seed, dialect=dialect)
    return path


def _gzip(src: Path, dst: Path) -> Path:
    dst.write_bytes(gzip.compress(src.read_bytes(), mtime=0))
    return dst


def _run(inputs, out, executor, storage=None, **kw):
    settings = {"hash_bits": 12, "split_bytes": 1 << 20, "workers": 3, "row_group_rows": 1000, **kw}
    config = PreprocessConfig(inputs=[str(i) for i in inputs], output=str(out), **settings)
    return run_preprocess(config, storage=storage or Storage(), executor=executor)


def _rows(prefix, split: str) -> SparseRows:
    manifest = read_manifest(Storage(), str(prefix))
    parts = []
    for uri in manifest.shard_uris(str(prefix), split):
        with ShardReader(Storage(), uri) as reader:
            parts.append(reader.read_all())
    return SparseRows.concat(parts)


def _assert_same_rows(a: SparseRows, b: SparseRows) -> None:
    for field in ("labels", "indptr", "indices", "values"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def _sources(prefix) -> list[str]:
    return read_manifest(Storage(), str(prefix)).source["files"]


COUNTS = ("rows_read", "rows_written", "rows_rejected", "train_rows", "test_rows", "blank_lines")


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """data/day_{1,2,10}.tsv (written out of order), plus files a glob for them must not take; read only."""
    data = tmp_path_factory.mktemp("inputs") / "data"
    for day, rows in ((10, 700), (2, 500), (1, 300)):
        _write(data / f"day_{day}.tsv", rows, seed=day)
    _write(data / "night_1.tsv", 400, seed=99)
    (data / "day_1.tsv.bak").write_text("not data\n")
    (data / "_SUCCESS").write_text("")
    return data


# --- globs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, days_taken", [
    ("day_*.tsv", [1, 10, 2]),
    ("day_?.tsv", [1, 2]),
    ("day_[12].tsv", [1, 2]),
    ("day_1*.tsv", [1, 10]),
])
def test_a_local_glob_takes_the_matching_files_in_sorted_order(days, tmp_path, inline_executor, pattern, days_taken):
    summary = _run([days / pattern], tmp_path / "out", inline_executor)
    assert _sources(tmp_path / "out") == [str(days / f"day_{d}.tsv") for d in days_taken]
    assert summary["rows_written"] == sum({1: 300, 2: 500, 10: 700}[d] for d in days_taken)


def test_a_relative_glob_is_resolved_by_the_driver(days, tmp_path, inline_executor, monkeypatch):
    monkeypatch.chdir(days.parent)
    summary = _run(["data/day_*.tsv"], tmp_path / "out", inline_executor)
    assert summary["rows_written"] == 1500
    assert all(Path(uri).is_absolute() for uri in _sources(tmp_path / "out"))


def test_a_file_whose_name_holds_glob_characters_is_taken_by_name(tmp_path, inline_executor):
    literal = _write(tmp_path / "clicks[1].tsv", 300, seed=1)
    _write(tmp_path / "clicks1.tsv", 500, seed=2)  # what the same string matches as a pattern
    summary = _run([literal], tmp_path / "out", inline_executor)
    assert summary["rows_written"] == 300 and _sources(tmp_path / "out") == [str(literal)]


def test_rerunning_a_glob_writes_identical_shards(days, tmp_path, inline_executor):
    a = _run([days / "day_*.tsv"], tmp_path / "a", inline_executor)
    b = _run([days / "day_*.tsv"], tmp_path / "b", inline_executor)
    listed = _run([days / f"day_{d}.tsv" for d in (1, 10, 2)], tmp_path / "c", inline_executor)
    assert {k: a[k] for k in COUNTS} == {k: b[k] for k in COUNTS} == {k: listed[k] for k in COUNTS}
    assert _sources(tmp_path / "a") == sorted(_sources(tmp_path / "a"))
    for split in ("train", "test"):
        _assert_same_rows(_rows(tmp_path / "a", split), _rows(tmp_path / "b", split))
        _assert_same_rows(_rows(tmp_path / "a", split), _rows(tmp_path / "c", split))


def test_a_glob_that_matches_nothing_names_the_pattern(days, tmp_path, inline_executor):
    with pytest.raises(PreprocessError, match=r"no files match .*data/week_\*\.tsv"):
        _run([days / "week_*.tsv"], tmp_path / "out", inline_executor)
    with pytest.raises(PreprocessError, match="no files match"):  # only bookkeeping files match
        _run([days / "_*"], tmp_path / "out", inline_executor)
    assert not inline_executor.events


# --- lists of inputs ---------------------------------------------------------------------------------------


def test_a_list_keeps_its_order_and_takes_each_file_once(days, tmp_path, inline_executor):
    inputs = [days / "night_1.tsv", days / "day_2.tsv", days / "day_*.tsv", days / "day_2.tsv"]
    summary = _run(inputs, tmp_path / "out", inline_executor)
    order = ("night_1.tsv", "day_2.tsv", "day_1.tsv", "day_10.tsv")
    assert _sources(tmp_path / "out") == [str(days / n) for n in order]
    assert summary["rows_written"] == 400 + 500 + 300 + 700


def test_one_missing_input_in_a_list_is_named(days, tmp_path, inline_executor):
    with pytest.raises(PreprocessError, match=r"input .*day_3\.tsv: no such file, and no files under that path"):
        _run([days / "day_1.tsv", days / "day_3.tsv"], tmp_path / "out", inline_executor)


# --- gzip --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect, block_bytes", [("tsv", 32 << 20), ("csv", 32 << 20), ("csv", 4096)])
def test_gzip_text_gives_the_same_shards_as_the_plain_text(tmp_path, inline_executor, dialect, block_bytes):
    """Also when the worker decompresses the file in many small blocks (bounded memory)."""
    plain = _write(tmp_path / f"clicks.{dialect}", 4000, seed=3, dialect=dialect)
    packed = _gzip(plain, tmp_path / f"clicks.{dialect}.gz")
    # One split each, so that even the order of the rows in the shards must agree.
    a = _run([plain], tmp_path / "plain", inline_executor, workers=1)
    b = _run([packed], tmp_path / "gz", inline_executor, workers=1, block_bytes=block_bytes)
    assert {k: a[k] for k in COUNTS} == {k: b[k] for k in COUNTS}
    assert a["rows_written"] == 4000 and a["rows_rejected"] == 0
    ma, mb = read_manifest(Storage(), str(tmp_path / "plain")), read_manifest(Storage(), str(tmp_path / "gz"))
    sa, sb = ma.transform["numeric_stats"], mb.transform["numeric_stats"]
    for key in sa:  # blocks sum in another order: the same sums, up to rounding
        np.testing.assert_allclose(np.array(sa[key], float), np.array(sb[key], float), rtol=1e-12, err_msg=key)
    for split in ("train", "test"):
        ra, rb = _rows(tmp_path / "plain", split), _rows(tmp_path / "gz", split)
        for field in ("labels", "indptr", "indices"):
            np.testing.assert_array_equal(getattr(ra, field), getattr(rb, field), err_msg=field)
        np.testing.assert_allclose(ra.values, rb.values, rtol=1e-6)


def test_gzip_is_found_by_its_magic_bytes_without_the_suffix(tmp_path, inline_executor):
    plain = _write(tmp_path / "clicks.tsv", 1000, seed=4)
    hidden = _gzip(plain, tmp_path / "clicks.dat")
    summary = _run([hidden], tmp_path / "out", inline_executor)
    assert summary["rows_written"] == 1000 and summary["rows_rejected"] == 0
    assert inline_executor.events[0]["source"]["compressed"] is True


def test_a_gzip_file_is_one_split_while_the_plain_file_is_cut(tmp_path, inline_executor):
    plain = _write(tmp_path / "clicks.tsv", 4000, seed=5)
    packed = _gzip(plain, tmp_path / "clicks.tsv.gz")
    split_bytes = 64 << 10
    assert packed.stat().st_size > 2 * split_bytes  # big enough to be cut, were it plain text
    a = _run([plain], tmp_path / "plain", inline_executor, split_bytes=split_bytes)
    stats_events = len(inline_executor.events) // 2
    b = _run([packed], tmp_path / "gz", inline_executor, split_bytes=split_bytes)
    gz_events = inline_executor.events[2 * stats_events:]
    assert read_manifest(Storage(), str(tmp_path / "plain")).source["splits"] >= plain.stat().st_size // split_bytes
    assert read_manifest(Storage(), str(tmp_path / "gz")).source["splits"] == 1
    assert [e["source"] for e in gz_events if e["task"] == "preprocess.stats"] == [
        {"uri": str(packed), "start": 0, "end": packed.stat().st_size, "size": packed.stat().st_size,
         "compressed": True}]
    assert a["rows_written"] == b["rows_written"] == 4000


def test_plain_files_share_the_splits_that_gzip_files_leave():
    dialect = {"delimiter": "\t", "header": False}
    files = [InputFile("a.gz", 10_000, True, dialect), InputFile("b.tsv", 9_000, False, dialect),
             InputFile("c.gz", 50, True, dialect)]
    splits = plan_splits(files, split_bytes=1 << 20, min_splits=5)
    assert [(s.file.uri, s.start, s.end) for s in splits] == [
        ("a.gz", 0, 10_000), ("b.tsv", 0, 3000), ("b.tsv", 3000, 6000), ("b.tsv", 6000, 9000), ("c.gz", 0, 50)]


@pytest.mark.parametrize("block_bytes", [32 << 20, 5000])
def test_rejected_rows_in_a_gzip_file_have_their_line_numbers(tmp_path, inline_executor, block_bytes):
    lines = _write(tmp_path / "good.tsv", 2000, seed=1).read_text().splitlines(keepends=True)
    lines[10] = "1\t2\t3\n"
    lines[1500] = "7" + lines[1500][1:]
    packed = tmp_path / "bad.tsv.gz"
    packed.write_bytes(gzip.compress("".join(lines).encode()))
    summary = _run([packed], tmp_path / "out", inline_executor, block_bytes=block_bytes)
    assert summary["rows_read"] == 2000 and summary["rejected_by_reason"] == {"bad_label": 1, "wrong_field_count": 1}
    rejected = [json.loads(line) for f in sorted((tmp_path / "out" / "rejected").iterdir())
                for line in f.read_text().splitlines()]
    assert {(r["line"], r["reason"], r["source"]) for r in rejected} == {
        (11, "wrong_field_count", str(packed)), (1501, "bad_label", str(packed))}


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _garbled(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :]


def _not_gzip(data: bytes) -> bytes:
    return b"this is plain text in a file named .gz\n"


@pytest.mark.parametrize("damage, found_by_worker", [(_truncated, True), (_garbled, True), (_not_gzip, False)])
def test_a_corrupt_gzip_file_is_a_clear_error_naming_it(tmp_path, inline_executor, damage, found_by_worker):
    plain = _write(tmp_path / "clicks.tsv", 4000, seed=6)
    packed = tmp_path / "clicks.tsv.gz"
    out = tmp_path / "out"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    _run([packed], out, inline_executor)
    assert (out / "_manifest.json").exists()
    packed.write_bytes(damage(packed.read_bytes()))
    inline_executor.events.clear()
    with pytest.raises(PreprocessError, match=rf"{packed}: cannot decompress this gzip file, is it corrupt or trunc"):
        _run([packed], out, inline_executor)
    # Damage past the first bytes is found by a worker, and still reported as bad input. Once workers
    # have started the old output is no longer finished; damage found while planning leaves it alone.
    assert bool(inline_executor.events) == found_by_worker
    assert (out / "_manifest.json").exists() != found_by_worker


# --- empty and missing input -------------------------------------------------------------------------------


def test_an_input_with_no_content_at_all_is_an_error(tmp_path, inline_executor):
    (tmp_path / "empty.tsv").write_bytes(b"")
    (tmp_path / "nothing.tsv.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "nothing-either.gz").write_bytes(gzip.compress(b"") * 2)
    everything = "the input is empty: .*/empty.tsv, .*/nothing-either.gz, .*/nothing.tsv.gz$"
    with pytest.raises(PreprocessError, match=everything):
        _run([tmp_path / "*"], tmp_path / "out", inline_executor)
    with pytest.raises(PreprocessError, match="the input is empty"):
        _run([tmp_path / "nothing.tsv.gz"], tmp_path / "out", inline_executor)
    assert not inline_executor.events


def test_files_without_content_are_left_out_of_a_larger_input(tmp_path, inline_executor):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a-empty.tsv.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "in" / "b-empty.tsv").write_bytes(b"")
    good = _gzip(_write(tmp_path / "c.tsv", 500, seed=7), tmp_path / "in" / "c.tsv.gz")
    summary = _run([tmp_path / "in"], tmp_path / "out", inline_executor)
    assert summary["rows_written"] == 500 and _sources(tmp_path / "out") == [str(good)]


def test_strings_are_not_lists_of_inputs():
    with pytest.raises(ValueError, match="inputs must be a list of URIs"):
        PreprocessConfig(inputs="data/*.tsv", output="out").validate()


# --- S3 ----------------------------------------------------------------------------------------------------


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="clicks")
        for key in ("logs/2025-12/part-0.tsv.gz", "logs/2026-01/part-0.tsv.gz", "logs/2026-01/part-1.tsv.gz",
                    "logs/2026-01/_SUCCESS", "logs/2026-02/part-0.tsv.gz", "logs/2026-02/index.txt", "other/x"):
            client.put_object(Bucket="clicks", Key=key, Body=b"")
        yield client


def test_an_s3_glob_lists_only_the_prefix_before_its_first_glob_character(s3):
    prefixes = []
    s3.meta.events.register("provide-client-params.s3.ListObjectsV2",
                            lambda params, **_: prefixes.append(params["Prefix"]))
    storage = Storage(s3_client_factory=lambda: s3)
    assert storage.glob("s3://clicks/logs/2026-*/part-*.tsv.gz") == [
        "s3://clicks/logs/2026-01/part-0.tsv.gz", "s3://clicks/logs/2026-01/part-1.tsv.gz",
        "s3://clicks/logs/2026-02/part-0.tsv.gz"]
    assert prefixes == ["logs/2026-"]
    assert storage.glob("s3://clicks/logs/202?-0[2-9]/*") == [
        "s3://clicks/logs/2026-02/index.txt", "s3://clicks/logs/2026-02/part-0.tsv.gz"]
    assert storage.glob("s3://clicks/*/x") == ["s3://clicks/other/x"]
    assert storage.glob("s3://clicks/logs/2027-*") == []
    with pytest.raises(StorageError, match="not in the bucket name"):
        storage.glob("s3://click*/logs/*")


def test_a_local_glob_star_crosses_folders_like_an_s3_key_filter(tmp_path):
    for name in ("a/1.tsv", "a/b/2.tsv", "a/3.csv", "c/4.tsv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert Storage().glob(f"{tmp_path}/a/*.tsv") == [f"{tmp_path}/a/1.tsv", f"{tmp_path}/a/b/2.tsv"]
    assert Storage().glob(f"{tmp_path}/[ac]/?.*") == [f"{tmp_path}/a/1.tsv", f"{tmp_path}/a/3.csv",
                                                     f"{tmp_path}/c/4.tsv"]


@pytest.mark.parametrize("uri, message", [
    ("s3://clicks/logs/2027-*/part-*.tsv.gz", r"no files match s3://clicks/logs/2027-\*/part-\*\.tsv\.gz"),
    ("s3://clicks/nothing/here", "input s3://clicks/nothing/here: no such file, and no files under that prefix"),
    ("s3://nope/logs/", "bucket 'nope' does not exist"),
    ("s3://nope/logs/*.gz", "bucket 'nope' does not exist"),
])
def test_missing_s3_input_is_a_clear_error(s3, tmp_path, inline_executor, uri, message):
    with pytest.raises(PreprocessError, match=message):
        _run([uri], tmp_path / "out", inline_executor, storage=Storage(s3_client_factory=lambda: s3))


def test_an_s3_glob_of_gzip_parts_through_the_lambda_runtime(moto_endpoint, tmp_path):
    hook = CirrusHook(aws_conn_id="moto", settings=ExecutorSettings(kind="local", concurrency=3))
    storage = hook.get_storage()
    storage.s3.create_bucket(Bucket="clicks")
    parts = {"2026-01/part-0": (1500, 1), "2026-01/part-1": (1000, 2), "2026-02/part-0": (700, 3),
             "2025-12/part-0": (900, 4)}
    for name, (rows, seed) in parts.items():
        plain = _write(tmp_path / "raw" / f"{name}.tsv", rows, seed)
        storage.write_bytes(f"s3://clicks/logs/{name}.tsv.gz", gzip.compress(plain.read_bytes()))
    _write(tmp_path / "raw" / "plain.tsv", 800, seed=5)
    storage.write_bytes("s3://clicks/logs/2026-03/part-0.tsv", (tmp_path / "raw" / "plain.tsv").read_bytes())

    with hook.get_executor() as executor:
        summary = _run(["s3://clicks/logs/2026-*/part-*.tsv*"], "s3://clicks/shards", executor, storage=storage)
        assert summary["rows_written"] == 1500 + 1000 + 700 + 800 and summary["rows_rejected"] == 0
        manifest = read_manifest(storage, "s3://clicks/shards")
        assert manifest.source["files"] == [f"s3://clicks/logs/{n}" for n in (
            "2026-01/part-0.tsv.gz", "2026-01/part-1.tsv.gz", "2026-02/part-0.tsv.gz", "2026-03/part-0.tsv")]

        broken = "s3://clicks/logs/2026-02/part-0.tsv.gz"
        data = storage.read_bytes(broken)
        storage.write_bytes(broken, data[: len(data) // 2])
        with pytest.raises(PreprocessError, match=f"{broken}: cannot decompress this gzip file"):
            _run(["s3://clicks/logs/2026-*/part-*.tsv*"], "s3://clicks/shards", executor, storage=storage)
    assert not storage.exists("s3://clicks/shards/_manifest.json")


# --- the command line and the operator ---------------------------------------------------------------------


def test_the_cli_takes_a_quoted_glob_unexpanded(days, tmp_path):
    for day in (1, 2):
        _gzip(days / f"day_{day}.tsv", tmp_path / f"day_{day}.tsv.gz")
    pattern = shlex.quote(f"{tmp_path}/day_*.tsv.gz")
    command = f"{CLI} preprocess --input {pattern} --output {tmp_path / 'out'} --hash-bits 10 --concurrency 2 --json"
    out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["rows_written"] == 300 + 500


def test_the_cli_reports_a_glob_that_matches_nothing_in_one_line(tmp_path):
    out = subprocess.run([CLI, "preprocess", "--input", f"{tmp_path}/nomatch/*.tsv", "--output", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    assert out.stderr.strip() == f"cirrus-airflow preprocess: error: input {tmp_path}/nomatch/*.tsv: no files match " \
                                 f"{tmp_path}/nomatch/*.tsv"


@pytest.mark.parametrize("given, inputs", [
    ("s3://clicks/logs/2026-*/part-*.tsv.gz", ["s3://clicks/logs/2026-*/part-*.tsv.gz"]),
    (["data/a.tsv", "data/day_*.tsv.gz"], ["data/a.tsv", "data/day_*.tsv.gz"]),
])
def test_the_operator_takes_one_uri_or_a_list(given, inputs):
    from operators.preprocess import CirrusPreprocessOperator

    operator = CirrusPreprocessOperator(task_id="p", input_uris=given, output_uri="out")
    assert operator._config().inputs == inputs
    assert "glob" in CirrusPreprocessOperator.__doc__ and ".gz" in CirrusPreprocessOperator.__doc__
