"""``python -m ps_service``: run one parameter server process until shutdown or a signal.

Prints exactly ``listening on HOST:PORT`` (flushed) once connections are accepted, so
whoever started the process (the launcher, a shell script) can read the address even
when port 0 picked a free port. The token is read from a file so that it never shows
up in ``ps`` output or shell history.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ps_service.errors import PSStartupError
from ps_service.protocol import DEFAULT_MAX_FRAME_BYTES
from ps_service.server import ParameterServer


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token = read_token(args.token_file) if args.token_file else None
    except ValueError as error:
        print(f"ps_service: {error}", file=sys.stderr)
        return 2
    server = ParameterServer(args.host, args.port, token, max_frame_bytes=args.max_frame_bytes)
    try:
        asyncio.run(_serve(server))
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


async def _serve(server: ParameterServer) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_shutdown)
    await server.serve(on_listening=lambda address: print(f"listening on {address}", flush=True))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ps_service", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one")
    parser.add_argument("--token-file", type=Path, help="file holding the token clients must prove")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES,
                        help=f"largest accepted frame (default {DEFAULT_MAX_FRAME_BYTES})")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


if __name__ == "__main__":
    sys.exit(main())
