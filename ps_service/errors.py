"""The exceptions of the parameter server and its client.

One hierarchy serves both sides: the server raises :class:`PSError` when it refuses a
request, sends its message back in the error reply, and the client raises a
:class:`PSError` with the same message, so a worker's log says what the server saw.
"""

from __future__ import annotations


class PSError(Exception):
    """The parameter server refused a request; the message says why and names the table."""


class PSAuthError(PSError):
    """The server requires a token and the client had none, or the wrong one."""


class PSConnectionError(PSError, ConnectionError):
    """The server could not be reached, stopped answering, or closed the connection."""


class ProtocolError(PSError):
    """A frame broke the wire format (bad magic, version, size or body layout)."""


class PSStartupError(PSError):
    """A local server process or thread did not come up; the message carries its output."""
