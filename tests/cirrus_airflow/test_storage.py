import boto3
import pytest
from moto import mock_aws

from cirrus_airflow.formats.text import read_line_range
from cirrus_airflow.storage import Storage, StorageError, join, local_path, normalize


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bucket")
        yield client


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        yield Storage(), str(tmp_path / "root")
    else:
        client = request.getfixturevalue("s3")
        yield Storage(s3_client_factory=lambda: client), "s3://bucket/root"


def test_round_trip_ranges_list_and_delete(root):
    storage, base = root
    uri = join(base, "a", "b.bin")
    storage.write_bytes(uri, b"0123456789")
    storage.write_text(join(base, "c.txt"), "hello")
    assert storage.read_bytes(uri) == b"0123456789"
    assert storage.read_bytes(uri, 2, 5) == b"234"
    assert storage.read_bytes(uri, 8, 100) == b"89"
    assert storage.read_bytes(uri, 5, 5) == b""
    assert storage.size(uri) == 10 and storage.exists(uri)
    assert storage.list(base) == [join(base, "a", "b.bin"), join(base, "c.txt")]
    assert storage.list(join(base, "nothing")) == []
    storage.delete(uri)
    storage.delete(uri)  # deleting twice is fine: deletes are retried
    assert not storage.exists(uri)
    with pytest.raises(StorageError, match="no such"):
        storage.read_bytes(uri)


def test_line_ranges_work_over_s3(s3):
    storage = Storage(s3_client_factory=lambda: s3)
    data = b"".join(f"line {i}\n".encode() for i in range(1000))
    storage.write_bytes("s3://bucket/lines.txt", data)
    pieces = [read_line_range(storage, "s3://bucket/lines.txt", a, a + 997, len(data)) for a in range(0, len(data), 997)]
    assert b"".join(pieces) == data


def test_missing_bucket_is_named(s3):
    storage = Storage(s3_client_factory=lambda: s3)
    with pytest.raises(StorageError, match="bucket 'nope' does not exist"):
        storage.size("s3://nope/key")


def test_local_writes_are_atomic_and_leave_no_temporaries(tmp_path):
    storage = Storage()
    target = tmp_path / "x" / "file"
    storage.write_bytes(str(target), b"one")
    storage.write_bytes(f"file://{target}", b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file"]


def test_uri_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize("data/x") == str(tmp_path / "data" / "x")
    assert local_path("file:///abs/p") == local_path("/abs/p")
    assert normalize("s3://b/k") == "s3://b/k"
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        local_path("gs://bucket/key")
    with pytest.raises(StorageError, match="not an S3 URI"):
        Storage().read_bytes("s3://")
