import csv
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cirrus_airflow.formats import ratings
from cirrus_airflow.formats.ratings import RatingsDialect

MOVIELENS = Path(__file__).resolve().parents[3] / "shared" / "data" / "movielens-small" / "ratings.csv"
CSV3 = RatingsDialect(",", False, 3, 0, 1, 2)


def _parse(text, dialect=CSV3, first_line=1, skip_header=False):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return ratings.parse_block(data, dialect, first_line=first_line, skip_header=skip_header)


def _rejects(block):
    return sorted(zip(block.rejected.lines, block.rejected.reasons, block.rejected.texts))


# --- sniffing -------------------------------------------------------------------------


def test_sniff_movielens_csv_with_header():
    head = b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n"
    assert ratings.sniff(head, "f") == RatingsDialect(",", True, 4, 0, 1, 2)


def test_sniff_headers_by_common_names_in_any_order():
    assert ratings.sniff(b"\n\nts;Stars;ProductId;UID\n1;5;b;a\n", "f") == RatingsDialect(";", True, 4, 3, 2, 1)
    # Names it does not know: the first three columns, in order.
    assert ratings.sniff(b"who|what|how much\n", "f") == RatingsDialect("|", True, 3, 0, 1, 2)


def test_sniff_tab_without_header_and_movielens_1m_and_spaces():
    assert ratings.sniff(b"196\t242\t3\t881250949\n", "f") == RatingsDialect("\t", False, 4, 0, 1, 2)
    assert ratings.sniff(b"1::1193::5::978300760\n", "f") == RatingsDialect("::", False, 4, 0, 1, 2)
    assert ratings.sniff(b"  7   8  2.5 \n", "f") == RatingsDialect(" ", False, 3, 0, 1, 2)


def test_sniff_custom_column_names_matched_by_name_not_order():
    dialect = ratings.sniff(b"Score,Product,Customer,ts\n4,b,a,0\n", "f", columns=("customer", "PRODUCT", "score"))
    assert dialect == RatingsDialect(",", True, 4, 2, 1, 0)
    # A header in the usual order, but the caller says the user column is the one named "rating".
    dialect = ratings.sniff(b"user,item,rating\n", "f", columns=("rating", "item", "user"))
    assert (dialect.user, dialect.item, dialect.rating) == (2, 1, 0)


def test_sniff_errors_name_the_source_and_what_was_seen():
    with pytest.raises(ValueError, match=r"s3://b/r\.csv: .*user, item, rating, ts"):
        ratings.sniff(b"user,item,rating,ts\n", "s3://b/r.csv", columns=("uid", "item", "rating"))
    seen = r"^f\.txt: the first line has 2 field\(s\).*'1,2'.*Is this the right --format\?$"
    with pytest.raises(ValueError, match=seen):
        ratings.sniff(b"1,2\n3,4\n", "f.txt")
    with pytest.raises(ValueError, match=r"Is this the right --format\?$"):
        ratings.sniff(b"\n  \n", "f.txt")


def test_dialect_json_round_trip_and_validation():
    dialect = RatingsDialect("::", True, 5, 3, 0, 4)
    assert RatingsDialect.from_json(dialect.to_json()) == dialect
    with pytest.raises(ValueError):
        RatingsDialect(",", False, 3, 0, 0, 2)
    with pytest.raises(ValueError):
        RatingsDialect(",", False, 3, 0, 1, 3)


# --- parsing --------------------------------------------------------------------------


def test_parse_values_ids_and_line_numbers():
    block = _parse("10,a1,4.5,x,y\nu2,7,0.5,,\n", RatingsDialect(",", False, 5, 1, 0, 2), first_line=41)
    rows = block.rows
    assert rows.users.to_pylist() == ["a1", "7"]
    assert rows.items.to_pylist() == ["10", "u2"]
    assert rows.ratings.dtype == np.float32 and rows.ratings.tolist() == [4.5, 0.5]
    assert rows.lines.tolist() == [41, 42]
    assert (block.lines, block.blank, len(block.rejected)) == (2, 0, 0)


def test_crlf_blank_lines_no_trailing_newline_and_spaces_around_fields():
    block = _parse("1,2,3\r\n\r\n  \n 4 ,\t5 , 2.5 \r\n6,7,1")
    assert block.rows.users.to_pylist() == ["1", "4", "6"]
    assert block.rows.items.to_pylist() == ["2", "5", "7"]
    assert block.rows.ratings.tolist() == [3.0, 2.5, 1.0]
    assert block.rows.lines.tolist() == [1, 4, 5]
    assert (block.lines, block.blank) == (5, 2)


def test_header_is_skipped_only_when_asked():
    text = "\nuser,item,rating\n1,2,3\n"
    dialect = RatingsDialect(",", True, 3, 0, 1, 2)
    first = _parse(text, dialect, skip_header=True)
    assert first.rows.lines.tolist() == [3] and not len(first.rejected)
    # Another split of the same file: a line that looks like a header is a bad row there.
    later = _parse(text, dialect, first_line=100)
    assert later.rows.lines.tolist() == [102]
    assert _rejects(later) == [(101, "bad_number", "user,item,rating")]


def test_a_byte_order_mark_starts_the_file_not_the_first_id():
    block = _parse("\ufeff1,2,3\n".encode("utf-8"))
    assert block.rows.users.to_pylist() == ["1"]


def test_each_reject_reason_with_line_and_text():
    lines = [
        "1,2,3",
        "1,2",  # 2: too few fields
        "1,2,3,4",  # 3: too many
        ",2,3",  # 4: no user
        "1, ,3",  # 5: no item (only blanks)
        "1,2,",  # 6: no rating
        "1,2,good",  # 7
        "1,2,nan",  # 8
        "1,2,-inf",  # 9
        "1,2,1e39",  # 10: finite as float64, not as float32
        ",2,x",  # 11: the first reason that applies
        "5,6,2",
    ]
    block = _parse("\n".join(lines) + "\n")
    assert block.rows.lines.tolist() == [1, 12]
    assert _rejects(block) == [
        (2, "wrong_field_count", "1,2"),
        (3, "wrong_field_count", "1,2,3,4"),
        (4, "missing_id", ",2,3"),
        (5, "missing_id", "1, ,3"),
        (6, "bad_number", "1,2,"),
        (7, "bad_number", "1,2,good"),
        (8, "bad_number", "1,2,nan"),
        (9, "bad_number", "1,2,-inf"),
        (10, "bad_number", "1,2,1e39"),
        (11, "missing_id", ",2,x"),
    ]


def test_ids_that_are_not_utf8_are_rejected_as_missing():
    block = _parse("caf\u00e9,1,3\n".encode("utf-8") + "b\u00e9,1,3\n".encode("latin-1") + b"x,y,1\n")
    assert block.rows.users.to_pylist() == ["caf\u00e9", "x"]
    assert [(line, reason) for line, reason, _ in _rejects(block)] == [(2, "missing_id")]


def test_movielens_1m_double_colon_delimiter():
    dialect = ratings.sniff(b"1::1193::5::978300760\n", "f")
    block = _parse("1::1193::5::978300760\r\n2::3:4::1::0\n3::::4::0\n", dialect)
    assert block.rows.users.to_pylist() == ["1", "2"]
    assert block.rows.items.to_pylist() == ["1193", "3:4"]
    assert block.rows.ratings.tolist() == [5.0, 1.0]
    # The rejected line reads as written, not with the byte that stood in for "::".
    assert _rejects(block) == [(3, "missing_id", "3::::4::0")]


def test_stand_in_byte_never_collides_with_the_data():
    block = _parse(b"a\x1fb::c\x1e::4\n", RatingsDialect("::", False, 3, 0, 1, 2))
    assert block.rows.users.to_pylist() == ["a\x1fb"] and block.rows.items.to_pylist() == ["c\x1e"]


def test_space_separated_runs_of_spaces():
    dialect = ratings.sniff(b"1 2 3\n", "f")
    block = _parse("  1   2  3.5  \r\n7 8\n9  10 1\n", dialect, first_line=3)
    assert block.rows.users.to_pylist() == ["1", "9"]
    assert block.rows.items.to_pylist() == ["2", "10"]
    assert block.rows.lines.tolist() == [3, 5]
    assert _rejects(block) == [(4, "wrong_field_count", "7 8")]


def test_empty_block():
    block = _parse(b"")
    assert (len(block.rows), block.lines, block.blank, len(block.rejected)) == (0, 0, 0, 0)
    assert block.rows.users.type == pa.string()


def test_take_and_row_hash_depend_on_the_row_only():
    block = _parse("1,2,3,a\n4,5,6,b\n1,2,3,c\n", RatingsDialect(",", False, 4, 0, 1, 2))
    h = block.rows.row_hash()
    assert h.dtype == np.uint64 and h[0] == h[2] and h[0] != h[1]
    picked = block.rows.take(np.array([1, 0]))
    assert picked.users.to_pylist() == ["4", "1"] and picked.lines.tolist() == [2, 1]
    assert picked.row_hash().tolist() == [h[1], h[0]]
    # Same rows in another dialect, at other lines: same hashes.
    other = _parse("\n\n2\t1\t3.0\n", RatingsDialect("\t", False, 3, 1, 0, 2))
    assert other.rows.row_hash()[0] == h[0]


def _random_text(rng: random.Random, n: int) -> tuple[str, list[tuple[str, str, float, int]], dict[int, str]]:
    """Random ratings lines with blanks, padding, CRLF and bad rows; the expected good rows and rejects."""
    out, good, bad = [], [], {}
    for _ in range(n):
        line_no = len(out) + 1
        kind = rng.random()
        user = str(rng.randrange(1000)) if rng.random() < 0.8 else f"u{rng.randrange(50)}"
        item = f"i{rng.randrange(5000)}"
        rating = rng.choice([0.5, 1.0, 2.5, 3.0, 4.5, 5.0, 3.25])
        end = "\r\n" if rng.random() < 0.1 else "\n"
        if kind < 0.03:
            out.append(rng.choice(["", "  ", "\t"]) + end)
        elif kind < 0.05:
            out.append(f"{user},{item}{end}")
            bad[line_no] = "wrong_field_count"
        elif kind < 0.07:
            out.append(f",{item},{rating},x{end}")
            bad[line_no] = "missing_id"
        elif kind < 0.09:
            out.append(f"{user},{item},{rng.choice(['', 'n/a', 'inf'])},x{end}")
            bad[line_no] = "bad_number"
        else:
            pad = " " if rng.random() < 0.1 else ""
            out.append(f"{pad}{user}{pad},{item},{pad}{rating},{rng.randrange(10**9)}{end}")
            good.append((user, item, rating, line_no))
    return "".join(out), good, bad


def test_blocks_split_anywhere_on_lines_parse_like_the_whole_text():
    rng = random.Random(7)
    text, good, bad = _random_text(rng, 3000)
    dialect = RatingsDialect(",", False, 4, 0, 1, 2)
    whole = _parse(text, dialect)
    assert list(zip(whole.rows.users.to_pylist(), whole.rows.items.to_pylist(),
                    whole.rows.ratings.tolist(), whole.rows.lines.tolist())) == good
    assert {line: reason for line, reason, _ in _rejects(whole)} == bad

    lines = text.splitlines(keepends=True)
    for _ in range(3):
        cuts = sorted(rng.sample(range(1, len(lines)), 20))
        users, items, values, numbers, hashes, rejects, total = [], [], [], [], [], [], 0
        for lo, hi in zip([0, *cuts], [*cuts, len(lines)]):
            block = _parse("".join(lines[lo:hi]), dialect, first_line=lo + 1)
            users += block.rows.users.to_pylist()
            items += block.rows.items.to_pylist()
            values += block.rows.ratings.tolist()
            numbers += block.rows.lines.tolist()
            hashes.append(block.rows.row_hash())
            rejects += _rejects(block)
            total += block.lines
        assert users == whole.rows.users.to_pylist() and items == whole.rows.items.to_pylist()
        assert values == whole.rows.ratings.tolist() and numbers == whole.rows.lines.tolist()
        assert np.array_equal(np.concatenate(hashes), whole.rows.row_hash())
        assert sorted(rejects) == _rejects(whole) and total == whole.lines == len(lines)


# --- id mapping -----------------------------------------------------------------------


def test_integer_ids_sort_by_number_others_by_text():
    assert ratings.distinct_ids(pa.array(["10", "2", "1", "2", "-3"])).to_pylist() == ["-3", "1", "2", "10"]
    assert ratings.distinct_ids(pa.array(["10", "2", "a", "2"])).to_pylist() == ["10", "2", "a"]
    # Equal numbers written differently are distinct ids, in a fixed order.
    assert ratings.distinct_ids(pa.array(["7", "07", "10"])).to_pylist() == ["07", "7", "10"]
    assert ratings.distinct_ids(pa.array([b"b", None, b"a"])).to_pylist() == ["a", "b"]
    assert ratings.distinct_ids(pa.array([], type=pa.string())).to_pylist() == []


def test_merge_of_parts_equals_the_mapping_of_the_whole():
    rng = np.random.default_rng(3)
    numeric = [str(v) for v in rng.integers(0, 100_000, 5000)]
    mixed = numeric + ["item-x"]
    for ids in (numeric, mixed):
        whole = ratings.distinct_ids(pa.array(ids))
        shuffled = list(rng.permutation(ids))
        cuts = sorted(rng.choice(np.arange(1, len(ids)), 6, replace=False))
        parts = [ratings.distinct_ids(pa.array(shuffled[a:b])) for a, b in zip([0, *cuts], [*cuts, len(ids)])]
        merged = ratings.merge_ids(parts)
        assert merged.equals(whole) and len(merged) == len(set(ids))
    # A numeric part and a non-numeric part: the union sorts as text.
    merged = ratings.merge_ids([ratings.distinct_ids(pa.array(["10", "9"])), ratings.distinct_ids(pa.array(["a"]))])
    assert merged.to_pylist() == ["10", "9", "a"]
    assert ratings.merge_ids([]).to_pylist() == []


def test_map_ids_round_trip_and_unknown_ids():
    mapping = ratings.merge_ids([ratings.distinct_ids(pa.array(["3", "1", "20"]))])
    values = pa.array(["20", "1", "3", "1", "99", None])
    index = ratings.map_ids(values, mapping)
    assert index.dtype == np.int32 and index.tolist() == [2, 0, 1, 0, -1, -1]
    assert mapping.take(pa.array(index[:4])).to_pylist() == values.to_pylist()[:4]
    assert ratings.map_ids(pa.array([b"3"]), mapping).tolist() == [1]


# --- real data ------------------------------------------------------------------------


@pytest.mark.skipif(not MOVIELENS.exists(), reason="MovieLens sample not available")
def test_movielens_small_whole_file():
    data = MOVIELENS.read_bytes()
    dialect = ratings.sniff(data[:4096], str(MOVIELENS))
    assert dialect == RatingsDialect(",", True, 4, 0, 1, 2)
    block = ratings.parse_block(data, dialect, first_line=1, skip_header=True)
    with MOVIELENS.open(newline="") as f:
        reference = [float(row["rating"]) for row in csv.DictReader(f)]
    assert len(block.rows) == len(reference) == 100_836 and not len(block.rejected)
    assert block.rows.lines[0] == 2 and block.rows.lines[-1] == 100_837
    assert abs(float(block.rows.ratings.astype(np.float64).mean()) - np.mean(reference)) < 1e-4
    users = ratings.distinct_ids(block.rows.users)
    items = ratings.distinct_ids(block.rows.items)
    assert (len(users), len(items)) == (610, 9724)
    assert users[:3].to_pylist() == ["1", "2", "3"]
    index = ratings.map_ids(block.rows.users, users)
    assert index.min() == 0 and index.max() == 609
