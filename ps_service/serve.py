"""``python -m ps_service`` and ``cirrus-airflow ps serve``: run a parameter server until
shutdown or a signal.

One process by default; ``--shards N`` starts N processes, one per shard, and supervises
them. Prints exactly ``listening on HOST:PORT`` (for a group, the shards' addresses
joined by commas, which is the address clients connect to), flushed, once connections
are accepted, so whoever started the process (the launcher, a shell script) can read
the address even when port 0 picked a free port. The token is read from a file so that it never shows
up in ``ps`` output or shell history.

``--lifeline-fd N`` ties the server's life to whoever started it: N is the read end of a pipe
whose write end only the starter holds, so the pipe reaches end of file when the starter
exits, even by SIGKILL, and the server then shuts down as on SIGTERM. Run by hand, the server
needs no lifeline.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import select
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ps_service.errors import PSStartupError
from ps_service.launcher import start_local_server
from ps_service.protocol import DEFAULT_MAX_FRAME_BYTES
from ps_service.server import ParameterServer

log = logging.getLogger("ps_service")


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve as ``args`` (from :func:`build_parser`) say; the exit code: 0 done, 1 failed, 2 bad input."""
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _check_arguments(args)
        token = read_token(args.token_file) if args.token_file else None
        if args.lifeline_fd is not None:
            _check_lifeline(args.lifeline_fd)
        if args.shards > 1:
            return _serve_group(args, token)
        server = ParameterServer(
            args.host, args.port, token, max_frame_bytes=args.max_frame_bytes,
            idle_timeout_s=args.idle_timeout, heartbeat_timeout_s=args.heartbeat_timeout,
            shard=args.shard_index, shards=args.shard_count, tls=server_tls_context(args.tls_cert, args.tls_key),
            checkpoint_uri=args.checkpoint_uri, checkpoint_interval_s=args.checkpoint_interval,
            restore_uri=args.restore,
        )
    except ValueError as error:
        print(f"ps_service: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server, args.lifeline_fd))
    except PSStartupError as error:
        print(f"ps_service: {error}", file=sys.stderr)
        return 1
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    if args.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {args.shards}")
    if not 0 <= args.shard_index < args.shard_count:
        raise ValueError(f"--shard-index must be in 0..{args.shard_count - 1} (--shard-count {args.shard_count})")
    if args.shards > 1 and args.shard_count > 1:
        raise ValueError("--shards starts a whole group; --shard-index/--shard-count describe one member of it")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    if args.checkpoint_interval <= 0:
        raise ValueError(f"--checkpoint-interval must be > 0 seconds, got {args.checkpoint_interval}")


def server_tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """A server context from PEM files, or None without them; unreadable files are a clear error."""
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"cannot load the TLS certificate {str(cert)!r} and key {str(key)!r}: {error}") from error
    return context


def _serve_group(args: argparse.Namespace, token: str | None) -> int:
    """Start one child process per shard, print the group's address, and supervise them.

    The group lives as long as every shard does: a signal, a lifeline at end of file or
    any shard exiting (a shutdown request reaches every shard) stops all of them. A shard
    that dies on its own makes the exit code 1, so a supervisor knows to restart.
    """
    try:
        group = start_local_server(
            token=token, host=args.host, port=args.port, shards=args.shards,
            checkpoint_uri=args.checkpoint_uri, checkpoint_interval_s=args.checkpoint_interval,
            restore_uri=args.restore,
            tls_cert=str(args.tls_cert) if args.tls_cert else None,
            tls_key=str(args.tls_key) if args.tls_key else None,
            server_args=["--idle-timeout", str(args.idle_timeout), "--heartbeat-timeout", str(args.heartbeat_timeout),
                         "--max-frame-bytes", str(args.max_frame_bytes), "--log-level", args.log_level],
        )
    except PSStartupError as error:
        print(f"ps_service: {error}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    print(f"listening on {group.address}", flush=True)
    try:
        while group.running and not stopping.wait(0.2):
            if args.lifeline_fd is not None and _lifeline_cut(args.lifeline_fd):
                log.warning("the process that started this parameter-server group is gone; shutting down")
                break
    finally:
        crashed = [(pid, code) for pid, code in zip(group.pids, group.exit_codes) if code not in (None, 0)]
        group.stop()
    if crashed and not stopping.is_set():
        print(f"ps_service: shard process(es) {crashed} (pid, exit code) ended on their own; "
              "the group was stopped", file=sys.stderr)
        return 1
    return 0


def _lifeline_cut(descriptor: int) -> bool:
    readable, _, _ = select.select([descriptor], [], [], 0)
    return bool(readable)


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ValueError(f"cannot read the token file {str(path)!r}: {error.strerror or error}") from error
    if not token:
        raise ValueError(f"the token file {str(path)!r} is empty; write the run's token into it")
    return token


def _check_lifeline(descriptor: int) -> None:
    try:
        os.fstat(descriptor)
    except OSError as error:
        raise ValueError(
            f"--lifeline-fd {descriptor} is not an open file descriptor ({error.strerror or error}); "
            "pass the read end of a pipe this process inherits, or leave the option out"
        ) from error


async def _serve(server: ParameterServer, lifeline_fd: int | None) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_shutdown)
    if lifeline_fd is not None:
        _watch_lifeline(loop, lifeline_fd, server)
    await server.serve(on_listening=lambda address: print(f"listening on {address}", flush=True))


def _watch_lifeline(loop: asyncio.AbstractEventLoop, descriptor: int, server: ParameterServer) -> None:
    """Shut down once the lifeline reaches end of file: the process that started this one is gone.

    Nobody writes to the pipe, so it only becomes readable at end of file (or on an error,
    which means the same: the lifeline can no longer tell that the starter is alive).
    """

    def on_readable() -> None:
        try:
            if os.read(descriptor, 64):
                return
        except OSError:
            pass
        loop.remove_reader(descriptor)
        log.warning("the process that started this parameter server is gone; shutting down")
        server.request_shutdown()

    loop.add_reader(descriptor, on_readable)


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The options, shared with ``cirrus-airflow ps serve``."""
    parser = argparse.ArgumentParser(prog="python -m ps_service", description=__doc__.split("\n")[0],
                                     add_help=add_help)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one")
    parser.add_argument("--token-file", type=Path, help="file holding the token clients must prove")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                        help=f"largest accepted frame (default {DEFAULT_MAX_FRAME_BYTES})")
    parser.add_argument("--shards", type=int, default=1, metavar="N",
                        help="start N server processes (a sharded group) and print their addresses")
    parser.add_argument("--shard-index", type=int, default=0, metavar="I",
                        help="this process's place in a group started by hand on several machines")
    parser.add_argument("--shard-count", type=int, default=1, metavar="N", help="the size of that group")
    parser.add_argument("--checkpoint-uri", metavar="URI",
                        help="write checkpoints of every table under URI (a path, file:// or s3://)")
    parser.add_argument("--checkpoint-interval", type=float, default=60.0, metavar="S",
                        help="seconds between checkpoints while tables change (default 60)")
    parser.add_argument("--restore", metavar="URI", help="resume the tables from the checkpoint under URI")
    parser.add_argument("--tls-cert", type=Path, metavar="F", help="serve TLS with this PEM certificate")
    parser.add_argument("--tls-key", type=Path, metavar="F", help="the certificate's PEM private key")
    parser.add_argument("--idle-timeout", type=float, default=600.0, metavar="S",
                        help="close connections silent for S seconds (default 600)")
    parser.add_argument("--heartbeat-timeout", type=float, default=30.0, metavar="S",
                        help="a registered worker silent for S seconds may be replaced (default 30)")
    parser.add_argument("--lifeline-fd", type=int, metavar="N",
                        help="an inherited pipe's read end: shut down when it reaches end of file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser
