"""Storage addressed by URI: a local path (or ``file://``) and ``s3://bucket/key``.

Everything that crosses between the driver, the Lambda workers and the parameter
server goes through this one interface, so that the same code runs against a local
folder on a laptop and against S3 (or any S3-compatible endpoint) in production.

The S3 client is injected: inside Airflow it comes from the Amazon provider's
``S3Hook`` (credentials and ``endpoint_url`` from the ``aws_default`` connection);
inside a Lambda invocation it comes from boto3's own credential chain, which honours
``AWS_ENDPOINT_URL_S3``. This module never imports Airflow.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse


GLOB_CHARS = "*?["


class StorageError(RuntimeError):
    """A storage operation failed in a way the user can act on (missing object, bad URI)."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def has_glob(uri: str) -> bool:
    return any(c in uri for c in GLOB_CHARS)


def _literal_prefix(pattern: str) -> str:
    """The part of a pattern before its first glob character: all that a listing can narrow on."""
    return pattern[: min((i for i in map(pattern.find, GLOB_CHARS) if i >= 0), default=len(pattern))]


def parse_s3(uri: str) -> S3Location:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri!r} is not an S3 URI; expected s3://bucket/key")
    return S3Location(parsed.netloc, parsed.path.lstrip("/"))


def local_path(uri: str) -> Path:
    """The filesystem path of a local URI (plain path or ``file://``), made absolute."""
    if is_s3(uri):
        raise StorageError(f"{uri!r} is an S3 URI, not a local path")
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{uri!r}: file:// URIs must name a local path (file:///abs/path)")
        return Path(unquote(parsed.path))
    if "://" in uri:
        raise StorageError(f"unsupported URI scheme in {uri!r}; use a local path, file:// or s3://")
    return Path(uri).expanduser().absolute()


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', whatever the scheme (os.path.join would break s3://)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def normalize(uri: str) -> str:
    """A canonical spelling: no trailing slash, local paths made absolute.

    Workers in other processes (or other machines for s3://) receive these URIs, so
    relative paths are resolved once, by the driver.
    """
    if is_s3(uri):
        loc = parse_s3(uri)
        return f"s3://{loc.bucket}/{loc.key.rstrip('/')}".rstrip("/")
    return str(local_path(uri))


def default_s3_client() -> Any:
    import boto3

    return boto3.client("s3")


class Storage:
    """Read and write objects by URI; one instance serves both schemes.

    Writes are atomic (a reader sees the old object or the new one, never half of
    it): local files are written to a temporary name and renamed, S3 puts are atomic.
    """

    def __init__(self, s3_client_factory: Callable[[], Any] | None = None) -> None:
        self._s3_client_factory = s3_client_factory or default_s3_client
        self._s3_client: Any = None
        self._lock = threading.Lock()

    @property
    def s3(self) -> Any:
        if self._s3_client is None:
            with self._lock:
                if self._s3_client is None:
                    self._s3_client = self._s3_client_factory()
        return self._s3_client

    def read_bytes(self, uri: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or the range [start, end) of them (end is clipped to the size)."""
        if is_s3(uri):
            return self._s3_read(uri, start, end)
        path = local_path(uri)
        try:
            with path.open("rb") as fh:
                if start:
                    fh.seek(start)
                return fh.read() if end is None else fh.read(max(0, end - (start or 0)))
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file") from None
        except IsADirectoryError:
            raise StorageError(f"{uri} is a directory, expected a file") from None

    def write_bytes(self, uri: str, data: bytes, *, content_type: str | None = None) -> None:
        """``content_type`` is what S3 serves the object as (a report opens in the browser
        instead of downloading); local files have none."""
        if is_s3(uri):
            loc = parse_s3(uri)
            extra = {"ContentType": content_type} if content_type else {}
            self.s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **extra)
            return
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_text(self, uri: str, text: str, *, content_type: str | None = None) -> None:
        self.write_bytes(uri, text.encode("utf-8"), content_type=content_type)

    def size(self, uri: str) -> int:
        if is_s3(uri):
            loc = parse_s3(uri)
            try:
                return int(self.s3.head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"])
            except self.s3.exceptions.ClientError as exc:
                raise self._s3_error(uri, exc) from None
        path = local_path(uri)
        if path.is_dir():
            raise StorageError(f"{uri} is a directory, expected a file")
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file") from None

    def exists(self, uri: str) -> bool:
        try:
            self.size(uri)
        except StorageError:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        """Every object under a folder-like prefix, recursively, sorted; [] if there is none."""
        if is_s3(prefix):
            loc = parse_s3(prefix)
            return self._s3_list(prefix, loc.bucket, loc.key.rstrip("/") + "/" if loc.key else "")
        root = local_path(prefix)
        if not root.is_dir():
            return []
        return sorted(str(p) for p in root.rglob("*") if p.is_file() and ".tmp-" not in p.name)

    def glob(self, pattern: str) -> list[str]:
        """Every object whose URI matches ``pattern``, sorted; [] if none does.

        ``*``, ``?`` and ``[...]`` have fnmatch semantics on the whole URI (so ``*`` also
        crosses ``/``, as S3 key filters do), the same for both schemes. Only what lies
        under the pattern's literal prefix is listed: on S3 that is one prefix listing
        (``logs/2026-`` for ``logs/2026-*/part-*``), never the whole bucket.
        """
        literal = _literal_prefix(pattern)
        if is_s3(pattern):
            bucket = parse_s3(pattern).bucket
            if has_glob(bucket):
                raise StorageError(f"{pattern}: glob characters may be used in the key, not in the bucket name")
            candidates = self._s3_list(pattern, bucket, parse_s3(literal).key)
        else:
            candidates = self.list(literal.rsplit("/", 1)[0] or "/")
        return [uri for uri in candidates if fnmatchcase(uri, pattern)]

    def open_input(self, uri: str, *, buffer_size: int = 1 << 16) -> BinaryIO:
        """A seekable reader; on S3 every read is one ranged GET, so a Parquet reader
        fetches the footer and the row groups it needs, never the whole object. A reader
        that streams the whole object asks for a larger ``buffer_size``: fewer, larger GETs."""
        if is_s3(uri):
            return io.BufferedReader(_S3RangeFile(self, uri, self.size(uri)), buffer_size=buffer_size)
        try:
            return local_path(uri).open("rb", buffering=buffer_size)
        except FileNotFoundError:
            raise StorageError(f"{uri}: no such file") from None

    def delete(self, uri: str) -> None:
        """Remove one object; a missing one is not an error (deletes are retried)."""
        if is_s3(uri):
            loc = parse_s3(uri)
            self.s3.delete_object(Bucket=loc.bucket, Key=loc.key)
            return
        local_path(uri).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> None:
        """Remove everything under a folder-like prefix (local folders too)."""
        if not is_s3(prefix):
            shutil.rmtree(local_path(prefix), ignore_errors=True)
            return
        for uri in self.list(prefix):
            self.delete(uri)

    def _s3_list(self, uri: str, bucket: str, key_prefix: str) -> list[str]:
        """The URIs of every key that starts with ``key_prefix`` (a raw prefix, not a folder), sorted."""
        paginator = self.s3.get_paginator("list_objects_v2")
        keys: list[str] = []
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except self.s3.exceptions.ClientError as exc:
            raise self._s3_error(uri, exc) from None
        return sorted(f"s3://{bucket}/{key}" for key in keys)

    def _s3_read(self, uri: str, start: int | None, end: int | None) -> bytes:
        loc = parse_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key}
        if start is not None or end is not None:
            if end is not None and end <= (start or 0):
                return b""
            last = "" if end is None else str(end - 1)
            kwargs["Range"] = f"bytes={start or 0}-{last}"
        try:
            return self.s3.get_object(**kwargs)["Body"].read()
        except self.s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise self._s3_error(uri, exc) from None

    @staticmethod
    def _s3_error(uri: str, exc: Exception) -> StorageError:
        error = getattr(exc, "response", {}).get("Error", {})
        code = error.get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageError(f"{uri}: no such object")
        if code == "NoSuchBucket":
            return StorageError(f"{uri}: bucket {parse_s3(uri).bucket!r} does not exist")
        if code in ("AccessDenied", "403", "Forbidden"):
            return StorageError(
                f"{uri}: access denied; check the credentials of the AWS connection "
                "(aws_conn_id) and the bucket policy"
            )
        return StorageError(f"{uri}: S3 error {code or type(exc).__name__}: {error.get('Message', exc)}")


class _S3RangeFile(io.RawIOBase):
    """A read-only, seekable view of one S3 object through ranged GETs."""

    def __init__(self, storage: Storage, uri: str, size: int) -> None:
        super().__init__()
        self._storage, self._uri, self._size, self._pos = storage, uri, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        end = min(self._size, self._pos + len(buffer))
        if end <= self._pos:
            return 0
        data = self._storage.read_bytes(self._uri, self._pos, end)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
