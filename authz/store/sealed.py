"""Secrets sealed in a shared change log: access key and session secrets encrypted (AES-GCM) with the fleet's key."""

from __future__ import annotations

import base64
import binascii
import os
import threading
from typing import Any, Callable

from .changelog import Build, ChangeLog, Entry, Record
from .errors import StorageFailure

KEY_BYTES = 32                     # AES-256
NONCE_BYTES = 12                   # AES-GCM's standard nonce, random per secret
PREFIX = "sealed:v1:"              # a sealed value: PREFIX + base64(nonce + ciphertext + tag)
AAD = b"authz change log secret"   # binds a sealed value to this use
# Record members whose string values are secrets wherever they appear (an op's fields, a published
# bundle's access_keys): a session token appears only in records logged before tokens were hashed.
SECRET_MEMBERS = frozenset({"secret", "session_token"})
KEY_ENV = "AUTHZ_STORE_KEY"


def parse_key(text: str, source: str = KEY_ENV) -> bytes:
    """The fleet key from its base64 text (32 bytes: `head -c 32 /dev/urandom | base64`)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{source}: the store key must be base64 text (make one with: head -c 32 /dev/urandom "
                         "| base64)") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{source}: the store key must be {KEY_BYTES} bytes once decoded, not {len(key)} (make one "
                         "with: head -c 32 /dev/urandom | base64)")
    return key


class SealedLog:
    """A ChangeLog whose records' secrets are sealed on the way in and opened on the way out.

    Whoever reads the database without the key sees policies, names, ids and session token digests,
    never a usable secret; every sidecar of the fleet holds the key. A sealed value that does not open
    (another key, a changed byte) fails the read: the sidecar never serves state it cannot verify."""

    def __init__(self, inner: ChangeLog, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != KEY_BYTES:
            raise ValueError(f"the store key must be {KEY_BYTES} bytes")
        self.inner = inner
        self._aead = AESGCM(key)
        self._lock = threading.Lock()

    def _seal(self, value: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        return PREFIX + base64.b64encode(nonce + self._aead.encrypt(nonce, value.encode(), AAD)).decode()

    def _open(self, value: str) -> str:
        from cryptography.exceptions import InvalidTag

        if not value.startswith(PREFIX):
            raise StorageFailure("a secret in the change log is not sealed: the store was written without the "
                                 "fleet key; refusing to use it")
        try:
            raw = base64.b64decode(value[len(PREFIX):], validate=True)
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], AAD).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise StorageFailure("a sealed secret in the change log does not open with this sidecar's store key "
                                 f"({KEY_ENV}): every sidecar of a fleet needs the same key") from None

    def _map(self, value: Any, fn: Callable[[str], str]) -> Any:
        if isinstance(value, dict):
            return {k: (fn(v) if k in SECRET_MEMBERS and isinstance(v, str) else self._map(v, fn))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self._map(v, fn) for v in value]
        return value

    def _opened(self, entries: list[Entry]) -> list[Entry]:
        return [(seq, self._map(r, self._open)) for seq, r in entries]

    def read(self, after: int) -> list[Entry]:
        return self._opened(self.inner.read(after))

    def head(self) -> int:
        return self.inner.head()

    def write(self, after: int, build: Build) -> list[int]:
        def sealed_build(entries: list[Entry]) -> list[Record]:
            return [self._map(r, self._seal) for r in build(self._opened(entries))]
        return self.inner.write(after, sealed_build)

    def listen(self, on_head: Callable[[int], None], stop: threading.Event,
               on_down: Callable[[StorageFailure], None] | None = None) -> None:
        listen = getattr(self.inner, "listen", None)
        if listen is None:
            raise TypeError("this change log sends no notifications")
        listen(on_head, stop, on_down)

    def close(self) -> None:
        self.inner.close()
