from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cirrus_airflow import hashing
from cirrus_airflow.formats import ParsedBlock, criteo
from cirrus_airflow.formats.text import split_uniform
from cirrus_airflow.input_formats import criteo_transform
from cirrus_airflow.numeric import ColumnStats, log_counts
from cirrus_airflow.transforms.tabular import TabularRows, TabularTransform

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "criteo-sample" / "criteo_sample.csv"


def _row(label="1", ints=None, cats=None, sep="\t") -> str:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{i:08x}" for i in range(26)]
    return sep.join([label, *ints, *cats])


def test_sniff_tells_tsv_from_csv_with_header():
    assert criteo.sniff(_row().encode(), "f") == criteo.CriteoDialect("\t", False)
    header = ",".join(criteo.COLUMNS)
    assert criteo.sniff(f"{header}\n{_row(sep=',')}".encode(), "f") == criteo.CriteoDialect(",", True)
    with pytest.raises(ValueError, match="has 3 comma-separated fields"):
        criteo.sniff(b"1,2,3\n", "f")


def test_parse_values_missing_and_hashes():
    ints = ["", "-2", "3.0"] + ["1"] * 10
    cats = [""] + ["abc"] * 25
    text = "\n".join([_row("0", ints, cats), _row("1")]) + "\n"
    block = criteo.parse_block(text.encode(), criteo.CriteoDialect("\t", False), first_line=10,
                               skip_header=False, hash_seed=5)
    rows = block.rows
    assert len(rows) == 2 and block.lines == 2 and not len(block.rejected)
    assert rows.labels.tolist() == [0.0, 1.0]
    assert np.isnan(rows.integers[0, 0]) and rows.integers[0, 1] == -2 and rows.integers[0, 2] == 3
    assert rows.lines.tolist() == [10, 11]
    # The same token in two columns hashes differently; an empty token is a value of its own.
    assert rows.categorical[0, 1] != rows.categorical[0, 2]
    assert rows.categorical[0, 1] != rows.categorical[1, 1]
    again = criteo.parse_block(text.encode(), criteo.CriteoDialect("\t", False), first_line=1,
                               skip_header=False, hash_seed=5)
    assert np.array_equal(again.rows.categorical, rows.categorical)


def test_bad_rows_are_rejected_with_reason_and_line_number():
    lines = [
        _row(),
        "1\t2\t3",
        _row(label="2"),
        _row(ints=["x"] + ["1"] * 12),
        "",
        _row(label=""),
        _row(ints=["inf"] + ["1"] * 12),
        _row(),
    ]
    block = criteo.parse_block(("\n".join(lines)).encode(), criteo.CriteoDialect("\t", False), first_line=1,
                               skip_header=False, hash_seed=0)
    assert len(block.rows) == 2 and block.rows.lines.tolist() == [1, 8]
    assert block.blank == 1
    got = sorted(zip(block.rejected.lines, block.rejected.reasons))
    assert got == [(2, "wrong_field_count"), (3, "bad_label"), (4, "bad_number"), (6, "bad_label"), (7, "bad_number")]
    assert block.rejected.texts[block.rejected.lines.index(2)] == "1\t2\t3"


def test_padded_numbers_are_rejected_not_a_crash_and_a_bom_is_ignored():
    block = criteo.parse_block((_row(ints=[" 7"] + ["1"] * 12) + "\n" + _row() + "\n").encode(),
                               criteo.CriteoDialect("\t", False), first_line=1, skip_header=False, hash_seed=0)
    assert len(block.rows) == 1 and block.rejected.reasons == ["bad_number"]
    header = "\ufeff" + ",".join(criteo.COLUMNS)
    assert criteo.sniff(header.encode("utf-8"), "f").header


def test_criteo_features_layout():
    block = criteo.parse_block((_row(ints=[""] + ["4"] * 12) + "\n").encode(), criteo.CriteoDialect("\t", False),
                               first_line=1, skip_header=False, hash_seed=0)
    r = block.rows
    rows = TabularRows(labels=r.labels, numeric=r.integers, categorical=r.categorical, lines=r.lines, hashes=r.hashes)
    features = criteo_transform(hash_bits=4, normalize="none")
    features = replace(features, stats=ColumnStats.of(log_counts(r.integers)))
    sparse = features.apply(rows)
    idx, val = sparse.indices.tolist(), sparse.values.tolist()
    assert features.feature_dim == 26 + 16
    assert idx[:12] == list(range(1, 13)) and np.allclose(val[:12], np.log1p(4))
    assert idx[12] == 13 and val[12] == 1.0  # I1 is missing: its indicator is on
    assert all(26 <= i < 42 for i in idx[13:]) and len(idx) == 12 + 1 + 26
    assert TabularTransform.from_json(features.to_json()).to_json() == features.to_json()


def _parse(text: str, **kw) -> ParsedBlock:
    return criteo.parse_block(text.encode(), criteo.CriteoDialect("\t", False), first_line=1, skip_header=False,
                              hash_seed=3, **kw)


def test_row_hash_is_a_hash_of_the_values_however_they_are_written():
    lines = [_row("0"), _row("1", ints=[""] * 13), _row("0", ints=["-0"] + ["7"] * 12)]
    rows = _parse("\n".join(lines) + "\n").rows
    assert len(set(rows.row_hash().tolist())) == 3
    # The same values hash alike wherever they are, as CSV or TSV, with CRLF, "7.0" for "7", "0" for "-0".
    csv = [line.replace("\t", ",") for line in (_row("1", cats=["x"] * 26), lines[1], _row("0", ints=["0"] + ["7.0"] * 12))]
    moved = criteo.parse_block(("\r\n".join(csv) + "\r\n").encode(), criteo.CriteoDialect(",", False), first_line=1,
                               skip_header=False, hash_seed=3).rows.row_hash()
    assert moved[1:].tolist() == rows.row_hash()[1:].tolist() and moved[0] not in rows.row_hash()
    # It is the same function of the values as for a CSV or Parquet input with a schema.
    want = hashing.hash_rows(np.column_stack([rows.labels, rows.integers]), rows.categorical)
    assert rows.row_hash().tolist() == want.tolist()


def test_numbers_read_from_the_bytes_are_arrows_and_both_paths_agree():
    values = ["0", "-0", "007", "-00012345", "12345678", "99999999", "123456789", "-1", "+5", "3.0", "1e3",
              "", "9" * 20, "42", "nan", "-", "12a", "0x1"]
    lines = [_row(ints=(values[i:] + values[:i])[:13]) for i in range(len(values))]
    clean_text, general_text = "\n".join(lines) + "\n", "\r\n".join(lines) + "\r\n\n"  # CRLF, a blank line
    assert split_uniform(clean_text.encode(), b"\t", 40) and not split_uniform(general_text.encode(), b"\t", 40)
    clean, general = _parse(clean_text), _parse(general_text)
    for block in (clean, general):
        assert block.rows.integers.view(np.uint64).tolist() == clean.rows.integers.view(np.uint64).tolist()
        assert np.array_equal(block.rows.categorical, clean.rows.categorical)
        assert np.array_equal(block.rows.row_hash(), clean.rows.row_hash())
    # Line i holds the values from i on; each row is what Arrow's cast reads (+inf: rejected).
    arrow = criteo._parse_numbers(pa.array([v.encode() for v in values], pa.binary()), allow_missing=True)
    want = [np.roll(arrow, -i)[:13] for i in range(len(values))]
    kept = [i for i in range(len(values)) if not np.isinf(want[i]).any()]
    assert 0 < len(kept) < len(values) and (clean.rows.lines - 1).tolist() == kept
    assert clean.rows.integers.view(np.uint64).tolist() == np.array([want[i] for i in kept]).view(np.uint64).tolist()


@pytest.mark.skipif(not SAMPLE.exists(), reason="../shared/data is not present")
def test_the_real_criteo_sample_parses_without_rejects():
    data = SAMPLE.read_bytes()
    dialect = criteo.sniff(data[:4096], str(SAMPLE))
    assert dialect == criteo.CriteoDialect(",", True)
    block = criteo.parse_block(data, dialect, first_line=1, skip_header=True, hash_seed=0)
    assert not len(block.rejected)
    assert len(block.rows) == block.lines - 1 >= 199
    assert set(block.rows.labels.tolist()) <= {0.0, 1.0}
    assert np.isnan(block.rows.integers).any()  # blanks are missing values
