"""Records the store hands to the gateway: a resource that exists and an access key's credential."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ResourceRecord:
    """A stream or signaling channel that exists."""

    type: str            # "stream" | "channel"
    name: str
    arn: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Credential:
    """An access key the SigV4 verifier checks a signature against."""

    access_key_id: str
    secret_access_key: str
    principal: str                      # the ARN the key authenticates as (user or assumed-role session)
    session_token: str | None = None    # temporary credentials: the request must carry this token
    expires_at: datetime | None = None
    session_token_sha256: bytes | None = None   # or only its SHA-256 (what the store keeps of a session token)

    @property
    def temporary(self) -> bool:
        return self.session_token is not None or self.session_token_sha256 is not None

    def token_digest(self) -> bytes | None:
        if self.session_token_sha256 is not None:
            return self.session_token_sha256
        return hashlib.sha256(self.session_token.encode()).digest() if self.session_token is not None else None
