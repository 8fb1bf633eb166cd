import random
from pathlib import Path

import numpy as np
import pytest

from cirrus_airflow.formats import libsvm
from cirrus_airflow.rejects import BAD_LABEL, BAD_NUMBER, DUPLICATE_INDEX, INDEX_OUT_OF_RANGE

A9A = Path(__file__).resolve().parents[3] / "shared" / "data" / "a9a"


def _parse(text: str, first_line: int = 1, max_index: int | None = None) -> libsvm.ParsedBlock:
    return libsvm.parse_block(text.encode(), first_line=first_line, max_index=max_index)


def _rejects(block: libsvm.ParsedBlock) -> list[tuple[int, str, str]]:
    r = block.rejected
    return sorted(zip(r.lines, r.reasons, r.texts))


def _reference(text: str) -> list[tuple[int, float, list[int], list[float]]]:
    """The rules of the format, one line at a time: (line, label, indices, values) of the
    rows that parse, for text without bad rows."""
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        pairs = sorted((int(i), float(v)) for i, v in (t.split(":") for t in tokens[1:]) if i != "qid")
        label = 1.0 if float(tokens[0]) == 1.0 else 0.0
        rows.append((number, label, [i for i, _ in pairs], [v for _, v in pairs]))
    return rows


def _as_tuples(rows: libsvm.LibsvmRows) -> list[tuple[int, float, list[int], list[float]]]:
    return [
        (int(rows.lines[r]), float(rows.labels[r]),
         rows.indices[rows.indptr[r]:rows.indptr[r + 1]].tolist(),
         rows.values[rows.indptr[r]:rows.indptr[r + 1]].tolist())
        for r in range(len(rows))
    ]


def test_labels_of_both_conventions_map_to_zero_and_one():
    text = "-1 1:1\n+1 1:1\n0 1:1\n1 1:1\n1.0 1:1\n-1.0 1:1\n0.0 1:1\n+1.0 1:1\n"
    block = _parse(text)
    assert block.rows.labels.dtype == np.float32
    assert block.rows.labels.tolist() == [0, 1, 0, 1, 1, 0, 0, 1]
    assert not len(block.rejected)


def test_each_kind_of_bad_label_is_rejected_on_its_line():
    lines = ["1 1:1", "2 1:1", "abc 1:1", "0.5 1:1", "3:1 4:1", "nan 1:1", "-inf 1:1", "+-1 1:1", "0 2:1"]
    block = _parse("\n".join(lines), first_line=101)
    assert block.rows.lines.tolist() == [101, 109]
    assert _rejects(block) == sorted((100 + i, BAD_LABEL, lines[i - 1]) for i in range(2, 9))


def test_a_small_block_parses_exactly():
    text = (
        "# a header comment\r\n"
        "+1 3:0.5 1:2 10:-1e-3\r\n"  # unsorted, CRLF
        "\r\n"
        "-1 qid:7 2:1.25\t4:3 # note: ignored\n"  # qid skipped, tab, comment with a colon
        "   \t \n"
        "0\n"  # no features
        "1 7:1e2 8:-0.0   \t\n"  # trailing spaces
        "  1 0:4"  # leading spaces, index 0, no newline at the end
    )
    block = _parse(text, first_line=5)
    rows = block.rows
    assert block.lines == 8 and block.blank == 3 and not len(block.rejected)
    assert rows.labels.tolist() == [1, 0, 0, 1, 1]
    assert rows.lines.tolist() == [6, 8, 10, 11, 12]
    assert rows.indptr.tolist() == [0, 3, 5, 5, 7, 8]
    assert rows.indices.tolist() == [1, 3, 10, 2, 4, 7, 8, 0]
    assert rows.values.tolist() == [2.0, 0.5, -0.001, 1.25, 3.0, 100.0, -0.0, 4.0]
    assert rows.indices.dtype == np.int64 and rows.values.dtype == np.float64
    assert rows.indptr.dtype == np.int64 and rows.lines.dtype == np.int64


def test_empty_and_blank_blocks():
    for text in ("", "\n\n", "  # only a comment\n"):
        block = _parse(text)
        assert len(block.rows) == 0 and block.rows.indptr.tolist() == [0]
        assert block.blank == block.lines == text.count("\n")


def test_every_reject_reason_with_line_and_text():
    lines = [
        "1 1:1 2:1",         # 1 good
        "1 x:1",             # 2 bad number: index not an integer
        "1 5",               # 3 bad number: no colon
        "1 1:",              # 4 bad number: no value
        "1 :1",              # 5 bad number: no index
        "1 1:abc",           # 6
        "1 1:nan",           # 7 not finite
        "1 1:inf",           # 8
        "1 1:2:3",           # 9 two colons
        "1 1.5:1",           # 10 index not an integer
        "1 -1:1",            # 11 negative index
        "1 11:1",            # 12 above max_index
        "1 2:1 2:5",         # 13 duplicate
        "1 3:1 2:1 3:5",     # 14 duplicate once sorted
        "7 x:1",             # 15 bad label comes first
        "1 x:1 -1:1",        # 16 bad number before out of range
        "1 -1:1 2:1 2:1",    # 17 out of range before duplicate
        "-1 10:1 0:2",       # 18 good
        "1 12345678901234567890:1",  # 19 too many digits for an index
    ]
    block = _parse("\n".join(lines) + "\n", first_line=1, max_index=10)
    expected = {2: BAD_NUMBER, 3: BAD_NUMBER, 4: BAD_NUMBER, 5: BAD_NUMBER, 6: BAD_NUMBER, 7: BAD_NUMBER,
                8: BAD_NUMBER, 9: BAD_NUMBER, 10: BAD_NUMBER, 11: INDEX_OUT_OF_RANGE, 12: INDEX_OUT_OF_RANGE,
                13: DUPLICATE_INDEX, 14: DUPLICATE_INDEX, 15: BAD_LABEL, 16: BAD_NUMBER,
                17: INDEX_OUT_OF_RANGE, 19: BAD_NUMBER}
    assert _rejects(block) == sorted((n, reason, lines[n - 1]) for n, reason in expected.items())
    assert block.rows.lines.tolist() == [1, 18]
    assert block.rows.indices.tolist() == [1, 2, 0, 10]
    # Without max_index only negative indices are out of range.
    assert [r for r in _rejects(_parse("1 11:1\n1 -1:1\n")) if r[1] == INDEX_OUT_OF_RANGE] == [
        (2, INDEX_OUT_OF_RANGE, "1 -1:1")
    ]


def test_an_index_too_long_is_rejected_alone_as_well():
    # A 19-digit index fits an int64, so a block with nothing else wrong never needs the
    # regular expression; it must still be rejected as the fallback would.
    block = _parse("1 1234567890123456789:1\n1 2:1\n")
    assert _rejects(block) == [(1, BAD_NUMBER, "1 1234567890123456789:1")]
    assert block.rows.lines.tolist() == [2]


def test_a_few_bad_values_in_a_big_block_are_found():
    # Enough entries that the failing cast is narrowed down before the regular expression.
    lines = [f"+1 {i}:0.5 {i + 1}:2" for i in range(1, 20001)]
    lines[3], lines[12345], lines[19999] = "+1 4:0.5 x:2", "+1 1:1,5", "+1 7:1e"
    block = _parse("\n".join(lines) + "\n")
    assert _rejects(block) == [(4, BAD_NUMBER, lines[3]), (12346, BAD_NUMBER, lines[12345]),
                               (20000, BAD_NUMBER, lines[19999])]
    assert len(block.rows) == 19997 and block.rows.values[:2].tolist() == [0.5, 2.0]
    assert block.rows.indices[-2:].tolist() == [19999, 20000]


def _random_text(rng: random.Random, rows: int) -> str:
    out = []
    for _ in range(rows):
        nnz = rng.randint(0, 30)
        indices = rng.sample(range(1, 10**6), nnz)
        if rng.random() < 0.8:
            indices.sort()
        values = [repr(rng.choice([1.0, rng.gauss(0, 1), rng.uniform(-1e6, 1e6), rng.random() * 1e-9]))
                  for _ in indices]
        tokens = [rng.choice(["-1", "+1"])] + [f"{i}:{v}" for i, v in zip(indices, values)]
        line = rng.choice([" ", "  ", "\t"]).join(tokens) + rng.choice(["", " ", "\t "])
        if rng.random() < 0.02:
            line += " # comment 1:2"
        out.append(line)
        if rng.random() < 0.02:
            out.append(rng.choice(["", "   ", "# only a comment"]))
    return "\n".join(out) + "\n"


def test_random_rows_match_a_reference_and_do_not_depend_on_block_cuts(monkeypatch):
    rng = random.Random(7)
    text = _random_text(rng, 2000)
    whole = _parse(text)
    assert not len(whole.rejected)
    assert _as_tuples(whole.rows) == _reference(text)

    # The same text cut at arbitrary line boundaries, each block numbered from its first line.
    lines = text.split("\n")[:-1]
    cuts = sorted(rng.sample(range(1, len(lines)), 12))
    parts = []
    for a, b in zip([0] + cuts, cuts + [len(lines)]):
        parts.append(_parse("\n".join(lines[a:b]) + "\n", first_line=a + 1))
    assert [t for p in parts for t in _as_tuples(p.rows)] == _as_tuples(whole.rows)
    assert sum(p.lines for p in parts) == whole.lines and sum(p.blank for p in parts) == whole.blank
    hashes = np.concatenate([p.rows.row_hash() for p in parts])
    assert np.array_equal(hashes, whole.rows.row_hash())

    # A big block is parsed in pieces: forcing tiny pieces must not change the result.
    monkeypatch.setattr(libsvm, "_PIECE", 997)
    pieces = _parse(text)
    for name in ("labels", "indptr", "indices", "values", "lines"):
        assert np.array_equal(getattr(pieces.rows, name), getattr(whole.rows, name))
    assert (pieces.lines, pieces.blank) == (whole.lines, whole.blank)


def test_rejects_are_found_in_every_piece(monkeypatch):
    monkeypatch.setattr(libsvm, "_PIECE", 64)
    lines = [f"1 {i}:1" for i in range(1, 60)]
    lines[10], lines[40] = "1 x:1", "5 1:1"
    block = _parse("\n".join(lines), first_line=3)
    assert _rejects(block) == [(13, BAD_NUMBER, "1 x:1"), (43, BAD_LABEL, "5 1:1")]
    assert len(block.rows) == 57 and block.rows.lines[-1] == 61 and block.lines == 59


def test_pieces_denser_than_the_first_still_fit(monkeypatch):
    # The output is sized from the first piece; later, denser pieces must grow it.
    monkeypatch.setattr(libsvm, "_PIECE", 64)
    lines = ["1 # " + "x" * 200] + [f"0 {i}:1 {i + 1}:2" for i in range(3000)]
    block = _parse("\n".join(lines))
    assert len(block.rows) == 3001 and block.rows.indptr[-1] == 6000
    assert block.rows.indices[-2:].tolist() == [2999, 3000] and block.rows.lines[-1] == 3001
    assert _as_tuples(block.rows) == _reference("\n".join(lines))


def test_row_hash_follows_content_not_position():
    block = _parse("1 1:1 2:2\n0 5:1\n1 2:2 1:1\n-1 1:1 2:2\n1 1:1 2:3\n1 1:1 3:2\n1 1:1\n")
    h = block.rows.row_hash()
    assert h.dtype == np.uint64
    assert h[0] == h[2]  # same row, written in another order on another line
    assert len(set(h[[0, 1, 3, 4, 5, 6]].tolist())) == 6  # label, value, index or length differ


def test_take_gathers_rows_in_order():
    rows = _parse("1 1:1 2:2\n0\n1 3:3\n0 4:4 5:5 6:6\n").rows
    sub = rows.take(np.array([3, 1, 0]))
    assert sub.labels.tolist() == [0, 0, 1] and sub.lines.tolist() == [4, 2, 1]
    assert sub.indptr.tolist() == [0, 3, 3, 5]
    assert sub.indices.tolist() == [4, 5, 6, 1, 2] and sub.values.tolist() == [4, 5, 6, 1, 2]
    assert np.array_equal(sub.row_hash(), rows.row_hash()[[3, 1, 0]])


def test_sniff_accepts_libsvm_and_explains_other_formats():
    head = b"# made by hand\n\n0 3:1 11:1 14:1 \n1 5:1 7:1 1"
    assert libsvm.sniff(head, "f") == libsvm.LibsvmDialect()
    assert libsvm.sniff(b"-1 qid:3 1:0.5 2:1e-3", "f") == libsvm.LibsvmDialect()
    assert libsvm.sniff(b"+1 1:0.5 22:0.2", "f") == libsvm.LibsvmDialect()  # the head may cut a token
    assert libsvm.LibsvmDialect.from_json(libsvm.LibsvmDialect().to_json()) == libsvm.LibsvmDialect()
    criteo_row = b"0\t1\t1\t5\t0\t1382\t4\t15\t2\t181\t1\t2\t\t2\t68fd1e64\t80e26c9b\n"
    with pytest.raises(ValueError, match=r"^s3://b/day_0: .*'1' is not index:value.*Is this the right --format\?$"):
        libsvm.sniff(criteo_row, "s3://b/day_0")
    with pytest.raises(ValueError, match=r"label 'label,I1,I2' is not a number.*Is this the right --format\?$"):
        libsvm.sniff(b"label,I1,I2\n1,2,3\n", "f.csv")


@pytest.mark.skipif(not A9A.exists(), reason="../shared/data is not present")
def test_the_real_a9a_file():
    data = A9A.read_bytes()
    libsvm.sniff(data[:4096], str(A9A))
    block = libsvm.parse_block(data, first_line=1)
    rows = block.rows
    assert len(rows) == 32560 and not len(block.rejected) and block.blank == 0
    assert rows.indices.min() >= 1 and rows.indices.max() <= 123
    assert set(np.unique(rows.labels).tolist()) <= {0.0, 1.0}
    text = data.decode().splitlines()
    assert np.diff(rows.indptr).tolist() == [len(line.split()) - 1 for line in text]
    assert rows.labels.tolist() == [float(line.split()[0]) for line in text]
    assert (rows.values == 1.0).all()
