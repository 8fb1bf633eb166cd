"""``python -m ps_service``: run one parameter server process until shutdown or a signal.

Prints exactly ``listening on HOST:PORT`` (flushed) once connections are accepted, so
whoever started the process (the launcher, a shell script) can read the address even
when port 0 picked a free port. The token is read from a file so that it never shows
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
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ps_service.errors import PSStartupError
from ps_service.protocol import DEFAULT_MAX_FRAME_BYTES
from ps_service.server import ParameterServer

log = logging.getLogger("ps_service")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token = read_token(args.token_file) if args.token_file else None
        if args.lifeline_fd is not None:
            _check_lifeline(args.lifeline_fd)
    except ValueError as error:
        print(f"ps_service: {error}", file=sys.stderr)
        return 2
    server = ParameterServer(args.host, args.port, token, max_frame_bytes=args.max_frame_bytes)
    try:
        asyncio.run(_serve(server, args.lifeline_fd))
    except PSStartupError as error:
        print(f"ps_service: {error}", file=sys.stderr)
        return 1
    return 0


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ps_service", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one")
    parser.add_argument("--token-file", type=Path, help="file holding the token clients must prove")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                        help=f"largest accepted frame (default {DEFAULT_MAX_FRAME_BYTES})")
    parser.add_argument("--lifeline-fd", type=int, metavar="N",
                        help="an inherited pipe's read end: shut down when it reaches end of file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


if __name__ == "__main__":
    sys.exit(main())
