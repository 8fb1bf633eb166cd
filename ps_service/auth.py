"""Challenge-response authentication: the server sends a fresh nonce, the client
answers with HMAC-SHA256(token, nonce). The token itself never crosses the wire, and
a recorded answer is useless against the next connection's nonce."""

from __future__ import annotations

import hashlib
import hmac
import secrets

NONCE_BYTES = 32
DIGEST_BYTES = hashlib.sha256().digest_size


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def sign(token: str, nonce: bytes) -> bytes:
    return hmac.new(token.encode(), nonce, hashlib.sha256).digest()


def verify(token: str, nonce: bytes, digest: bytes) -> bool:
    """Constant-time, so the comparison leaks nothing about the expected digest."""
    return hmac.compare_digest(sign(token, nonce), bytes(digest))
