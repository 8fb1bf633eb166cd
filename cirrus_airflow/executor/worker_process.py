"""The runtime's handle on one worker process (one warm local Lambda sandbox).

A worker is a fresh Python interpreter started with ``subprocess`` (a multiprocessing fork
would copy a threaded parent's locks in whatever state they were), in a session of its own so
that killing its process group also ends whatever the handler started, as Lambda does when it
tears down a sandbox. It runs one invocation at
a time; its stderr is read by a thread that forwards each line to Python logging and keeps
the last lines for the invocation's log tail.

Each worker also gets a lifeline: the read end of a pipe whose write end only the runtime
holds. When the runtime's process dies, even by SIGKILL, the pipe reaches end of file and the
worker kills its process group, so no handler outlives the task that started it. (Not
PR_SET_PDEATHSIG: it fires when the spawning *thread* exits, and workers are spawned from
short-lived HTTP handler threads.)
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from cirrus_airflow.executor import protocol

_KEPT_LOG_LINES = 200
_KEPT_LINE_CHARS = 4096
_LOG_FLUSH_WAIT_S = 2.0


class WorkerProcess:
    """One worker process; ``kill_reason`` records why the runtime killed it, if it did."""

    def __init__(self, handler: str, env: dict[str, str], log: logging.Logger) -> None:
        self._log = log
        child_end, self._lifeline = os.pipe()  # both ends close on exec; pass_fds hands the worker its end
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cirrus_airflow.executor.local_worker", handler, str(child_end)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
                pass_fds=(child_end,),
            )
        except BaseException:
            os.close(self._lifeline)
            raise
        finally:
            os.close(child_end)
        stdin, stdout, stderr = self.process.stdin, self.process.stdout, self.process.stderr
        assert stdin is not None and stdout is not None and stderr is not None  # all three were asked as PIPE
        self._requests, self._replies, self._stderr = stdin, stdout, stderr
        self.pid = self.process.pid
        self.started = time.monotonic()
        self.kill_reason: str | None = None
        self.peak_rss_mb = 0.0
        self._lock = threading.Lock()
        self._lines: collections.deque[str] = collections.deque(maxlen=_KEPT_LOG_LINES)
        self._invocation_logged = threading.Event()
        self._log_pump = threading.Thread(
            target=self._pump_log, name=f"cirrus-local-lambda-log-{self.pid}", daemon=True
        )
        self._log_pump.start()

    def wait_ready(self) -> dict[str, Any] | None:
        """The worker's first message (``ready`` or ``init_error``); None if it died first."""
        return self._receive()

    def run(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Send one invocation and wait for its reply; None if the worker died (or was killed) first."""
        self._invocation_logged.clear()
        try:
            protocol.send(self._requests, request)
        except OSError:
            return self._receive()
        reply = self._receive()
        if reply is not None:
            self._invocation_logged.wait(_LOG_FLUSH_WAIT_S)
        return reply

    def _receive(self) -> dict[str, Any] | None:
        reply = protocol.receive(self._replies)
        if reply is None:
            self.process.wait()
            self._log_pump.join(_LOG_FLUSH_WAIT_S)
        return reply

    def take_log(self) -> list[str]:
        """The log lines written since the last call."""
        with self._lock:
            lines = list(self._lines)
            self._lines.clear()
        return lines

    def sample_memory(self) -> float | None:
        """Resident memory in MB now, and the peak so far into ``peak_rss_mb``; None where /proc is missing.

        The kernel's peak (VmHWM) counts from the worker's exec, unlike ``ru_maxrss``, which
        starts from the parent's peak and would make every worker of a big parent look too large.
        """
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
                fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS:", "VmHWM:")))
        except OSError:
            return None
        if "VmRSS" not in fields:
            return None
        self.peak_rss_mb = max(self.peak_rss_mb, int(fields["VmHWM"].split()[0]) / 1024)
        return int(fields["VmRSS"].split()[0]) / 1024

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, reason: str) -> None:
        """Kill the worker and everything it started; the first reason given is the one reported."""
        with self._lock:
            if self.kill_reason is None:
                self.kill_reason = reason
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def exit_description(self) -> str:
        """How the process ended, in the words Lambda uses ("exit status 1", "signal: killed")."""
        code = self.process.wait()
        if code < 0:
            name = signal.strsignal(-code) or f"signal {-code}"
            return f"signal: {name.lower()}"
        return f"exit status {code}"

    def close(self, reason: str) -> None:
        """Kill the process (if still running), reap it, release its pipes and lifeline; the log thread closes stderr."""
        self.kill(reason)
        self.process.wait()
        self._log_pump.join(_LOG_FLUSH_WAIT_S)
        for stream in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                stream.close()
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1

    def _pump_log(self) -> None:
        with self._stderr:
            for raw in self._stderr:
                self._keep_log_line(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def _keep_log_line(self, line: str) -> None:
        if line.startswith(protocol.END_OF_INVOCATION_LOG):
            self._invocation_logged.set()
            return
        with self._lock:
            self._lines.append(line[:_KEPT_LINE_CHARS])
        self._log.info("%s", line)
