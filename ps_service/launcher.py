"""Start ``python -m ps_service`` as a child process and hand back its address.

The training driver uses this to bring up a run's parameter server on the machine it
runs on. The token goes through a 0600 temporary file that is deleted as soon as the
server is listening, so it never appears on a command line or in the environment.
The child's output (its log) is forwarded to this process's logging.

The child gets a lifeline (``--lifeline-fd``): the read end of a pipe whose write end only
this process holds. If this process dies without stopping the server, even by SIGKILL after
Airflow's SIGTERM, the pipe reaches end of file and the server shuts itself down instead of
running forever.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ps_service.client import PSClient
from ps_service.errors import PSError, PSStartupError

log = logging.getLogger(__name__)

_LISTENING = "listening on "
_TAIL_LINES = 40


@dataclass
class _Member:
    """One server process of a (possibly one-member) group."""

    process: subprocess.Popen[str]
    output: _ServerOutput
    lifeline: int | None


class LocalServer:
    """A running server process, or a sharded group of them; :meth:`stop` (or leaving a
    ``with`` block) ends every process. ``address`` is what clients connect to: one
    ``host:port``, or the group's addresses joined by commas in shard order."""

    def __init__(self, *, members: list[_Member], token: str | None, tls: str | None) -> None:
        self._members = members
        self._token = token
        self._tls = tls
        self.address = ",".join(member.output.address for member in members)

    @property
    def pid(self) -> int:
        return self._members[0].process.pid

    @property
    def pids(self) -> list[int]:
        return [member.process.pid for member in self._members]

    @property
    def exit_codes(self) -> list[int | None]:
        """Each member's exit code, None while it runs."""
        return [member.process.poll() for member in self._members]

    @property
    def running(self) -> bool:
        """True while every member runs; a group with a dead shard cannot serve its keys."""
        return all(member.process.poll() is None for member in self._members)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Ask for a graceful shutdown (SIGTERM if the servers do not answer), then kill."""
        alive = [member for member in self._members if member.process.poll() is None]
        if alive:
            try:
                if len(alive) < len(self._members):
                    raise PSError("a shard of the group already exited")
                with PSClient(self.address, self._token, timeout=timeout_s, tls=self._tls) as client:
                    client.shutdown()
            except (PSError, ValueError) as error:
                log.warning("graceful shutdown of the parameter server failed (%s); sending SIGTERM", error)
                for member in alive:
                    member.process.terminate()
            for member in alive:
                _wait_or_kill(member.process, timeout_s)
        for member in self._members:
            member.output.join(timeout_s)
            if member.process.stdout is not None:
                member.process.stdout.close()
            lifeline, member.lifeline = member.lifeline, None
            if lifeline is not None:
                os.close(lifeline)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_local_server(
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    shards: int = 1,
    checkpoint_uri: str | None = None,
    checkpoint_interval_s: float | None = None,
    restore_uri: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    server_args: Sequence[str] = (),
    startup_timeout_s: float = 30.0,
) -> LocalServer:
    """Start ``shards`` server processes and return once all accept connections.

    With ``port`` > 0, shard ``i`` listens on ``port + i``; port 0 picks free ports.
    ``server_args`` are further ``python -m ps_service`` options given to every member.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    options = [*_server_options(checkpoint_uri, checkpoint_interval_s, restore_uri, tls_cert, tls_key), *server_args]
    members: list[_Member] = []
    try:
        with _token_file(token) as token_path:
            for shard in range(shards):
                command = [sys.executable, "-m", "ps_service", "--host", host,
                           "--port", str(port + shard if port else 0),
                           "--shard-index", str(shard), "--shard-count", str(shards), *options]
                if token_path is not None:
                    command += ["--token-file", str(token_path)]
                members.append(_spawn(command, startup_timeout_s))
    except BaseException:
        LocalServer(members=members, token=token, tls=tls_cert).stop(timeout_s=5)
        raise
    server = LocalServer(members=members, token=token, tls=tls_cert)
    log.info("parameter server pid(s) %s listening on %s", server.pids, server.address)
    return server


def _server_options(checkpoint_uri: str | None, checkpoint_interval_s: float | None,
                    restore_uri: str | None, tls_cert: str | None, tls_key: str | None) -> list[str]:
    pairs = [("--checkpoint-uri", checkpoint_uri), ("--checkpoint-interval", checkpoint_interval_s),
             ("--restore", restore_uri), ("--tls-cert", tls_cert), ("--tls-key", tls_key)]
    return [part for flag, value in pairs if value is not None for part in (flag, str(value))]


def _spawn(command: list[str], startup_timeout_s: float) -> _Member:
    """Start the process and wait for its listening line; a process that never prints it is killed."""
    child_end, lifeline = os.pipe()  # both ends close on exec; pass_fds hands the child its end
    try:
        process = subprocess.Popen(
            [*command, "--lifeline-fd", str(child_end)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=_child_environment(), pass_fds=(child_end,),
        )
    except BaseException:
        os.close(lifeline)
        raise
    finally:
        os.close(child_end)
    output = _ServerOutput(process)
    try:
        output.wait_for_address(startup_timeout_s)
    except BaseException:
        process.kill()
        process.wait()
        os.close(lifeline)
        raise
    return _Member(process, output, lifeline)


def _wait_or_kill(process: subprocess.Popen[str], timeout_s: float) -> None:
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("parameter server pid %s did not exit within %s s; killing it", process.pid, timeout_s)
        process.kill()
        process.wait()


class _ServerOutput:
    """Reads the child's output: finds the listening line, keeps a tail for errors, logs the rest."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process
        self._address: str | None = None
        self._listening = threading.Event()
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._thread = threading.Thread(target=self._read, name=f"ps-output-{process.pid}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        assert self._address is not None, "the server has not printed its address yet"
        return self._address

    def wait_for_address(self, timeout_s: float) -> str:
        self._listening.wait(timeout_s)
        if self._address is not None:
            return self._address
        tail = "\n".join(self._tail) or "(no output)"
        code = self._process.poll()
        if code is not None:
            raise PSStartupError(f"the parameter server exited with code {code} before listening:\n{tail}")
        raise PSStartupError(
            f"the parameter server did not print 'listening on' within {timeout_s} s:\n{tail}"
        )

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            line = line.rstrip("\n")
            if self._address is None and line.startswith(_LISTENING):
                self._address = line[len(_LISTENING):].strip()
                self._listening.set()
                continue
            self._tail.append(line)
            log.info("[ps %s] %s", self._process.pid, line)
        self._listening.set()


@contextmanager
def _token_file(token: str | None) -> Iterator[Path | None]:
    """A file only this user can read (mkstemp creates it 0600), removed when the block ends."""
    if token is None:
        yield None
        return
    descriptor, name = tempfile.mkstemp(prefix="ps-token-")
    path = Path(name)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token)
        yield path
    finally:
        path.unlink(missing_ok=True)


def _child_environment() -> dict[str, str]:
    """Make ``ps_service`` importable in the child even when it is not installed."""
    package_root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, existing)))}
