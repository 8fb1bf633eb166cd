"""Byte-range splits own every line exactly once, whatever the line ends."""

import numpy as np
import pytest

from cirrus_airflow.formats.text import plan_ranges, read_line_range, split_lines
from cirrus_airflow.storage import Storage


def _file(lines: list[str], newline: str, trailing: bool) -> bytes:
    body = newline.join(lines)
    return (body + newline if trailing else body).encode()


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
@pytest.mark.parametrize("parts", [1, 2, 3, 7, 50, 1000])
def test_splits_partition_the_lines(tmp_path, newline, trailing, parts):
    rng = np.random.default_rng(parts)
    lines = ["x" * int(n) for n in rng.integers(0, 40, 200)]
    data = _file(lines, newline, trailing)
    path = tmp_path / "data.txt"
    path.write_bytes(data)
    storage = Storage()
    pieces = [read_line_range(storage, str(path), a, b, len(data)) for a, b in plan_ranges(len(data), parts)]
    assert b"".join(pieces) == data
    assert sum(len(split_lines(p)) for p in pieces if p) == len(lines)


def test_a_range_inside_one_long_line_owns_nothing(tmp_path):
    data = b"short\n" + b"y" * 1000 + b"\nend\n"
    path = tmp_path / "d.txt"
    path.write_bytes(data)
    assert read_line_range(Storage(), str(path), 100, 200, len(data)) == b""
    # The split holding the long line's first byte reads it to its end, past its own range.
    assert read_line_range(Storage(), str(path), 3, 10, len(data)) == b"y" * 1000 + b"\n"


def test_split_lines_handles_crlf_blank_and_missing_final_newline():
    lines = split_lines(b"a\tb\r\n\r\n  \nc\td")
    assert [lines.text(i) for i in range(len(lines))] == ["a\tb", "", "  ", "c\td"]
    assert lines.blank().tolist() == [False, True, True, False]
    delimiters = lines.delimiters(b"\t")
    assert delimiters.counts.tolist() == [2, 1, 1, 2]
    fields = lines.fields(delimiters, np.array([0, 3]), 2)
    assert fields.column(0).to_pylist() == [b"a", b"c"] and fields.column(1).to_pylist() == [b"b", b"d"]
    assert fields.take(np.array([1])).column(1).to_pylist() == [b"d"]
    assert len(split_lines(b"")) == 0


def test_plan_ranges_covers_the_file():
    ranges = plan_ranges(1001, 4)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1001
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert plan_ranges(3, 10) == [(0, 1), (1, 2), (2, 3)]
