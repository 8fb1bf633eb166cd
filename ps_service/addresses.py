"""``host:port`` strings, the one form in which a server address is printed and passed on."""

from __future__ import annotations


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """Accept ``"host:port"``, ``"[v6-host]:port"`` or a ``(host, port)`` tuple."""
    if isinstance(address, tuple):
        host, port = address
        return host, int(port)
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(
            f"parameter server address {address!r} is not host:port "
            "(the server prints it as 'listening on HOST:PORT')"
        )
    return host.removeprefix("[").removesuffix("]"), int(port)
