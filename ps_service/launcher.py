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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ps_service.client import PSClient
from ps_service.errors import PSError, PSStartupError

log = logging.getLogger(__name__)

_LISTENING = "listening on "
_TAIL_LINES = 40


class LocalServer:
    """A running server process; :meth:`stop` (or leaving a ``with`` block) ends it."""

    def __init__(self, *, process: subprocess.Popen[str], address: str, token: str | None,
                 output: _ServerOutput, lifeline: int) -> None:
        self._process = process
        self._token = token
        self._output = output
        self._lifeline: int | None = lifeline
        self.address = address

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Ask for a graceful shutdown (SIGTERM if the server does not answer), then kill."""
        if self.running:
            try:
                with PSClient(self.address, self._token, timeout=timeout_s) as client:
                    client.shutdown()
            except PSError as error:
                log.warning("graceful shutdown of the parameter server failed (%s); sending SIGTERM", error)
                self._process.terminate()
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("parameter server pid %s did not exit within %s s; killing it", self.pid, timeout_s)
                self._process.kill()
                self._process.wait()
        self._output.join(timeout_s)
        self._cut_lifeline()

    def _cut_lifeline(self) -> None:
        lifeline, self._lifeline = self._lifeline, None
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
    startup_timeout_s: float = 30.0,
) -> LocalServer:
    """Start a server process and return once it accepts connections."""
    child_end, lifeline = os.pipe()  # both ends close on exec; pass_fds hands the child its end
    command = [sys.executable, "-m", "ps_service", "--host", host, "--port", str(port),
               "--lifeline-fd", str(child_end)]
    try:
        with _token_file(token) as token_path:
            if token_path is not None:
                command += ["--token-file", str(token_path)]
            process, output, address = _spawn(command, child_end, startup_timeout_s)
    except BaseException:
        os.close(lifeline)
        raise
    finally:
        os.close(child_end)
    log.info("parameter server pid %s listening on %s", process.pid, address)
    return LocalServer(process=process, address=address, token=token, output=output, lifeline=lifeline)


def _spawn(command: list[str], child_end: int,
           startup_timeout_s: float) -> tuple[subprocess.Popen[str], _ServerOutput, str]:
    """Start the process and wait for its listening line; a process that never prints it is killed."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_child_environment(),
        pass_fds=(child_end,),
    )
    output = _ServerOutput(process)
    try:
        address = output.wait_for_address(startup_timeout_s)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, output, address


class _ServerOutput:
    """Reads the child's output: finds the listening line, keeps a tail for errors, logs the rest."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process
        self._address: str | None = None
        self._listening = threading.Event()
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._thread = threading.Thread(target=self._read, name=f"ps-output-{process.pid}", daemon=True)
        self._thread.start()

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
