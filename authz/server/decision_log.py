"""The decision log: one JSON line per decision, built from an allow-list of fields so that no secret can leak.

What a line holds is fixed by DecisionEvent: who asked for what, the answer, the statements that
decided it, the revision and the latency; both front doors (authz.v1 and Envoy's Check) write the
same shape. Secrets (secret access keys, session tokens, SigV4 signatures) never reach an event:
AssumeRole's credentials stay in its response, a Check refused before a decision carries only its
error code, and request contexts, which a gateway may fill with anything, are not logged at all.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from typing import Callable, NamedTuple, Sequence
from datetime import datetime, timezone

STDOUT = "-"
DENIED = "Denied"                     # the decision of a request refused before (or instead of) a policy decision


class DecisionEvent(NamedTuple):     # a NamedTuple: built for every decision, and cheaper than a dataclass
    rpc: str                          # Authorize, AuthorizeBatch, AssumeRole, or Check (Envoy ext_authz)
    request_id: str
    principal: str
    action: str
    resource: str
    decision: str                     # Allow, ExplicitDeny, ImplicitDeny; refused before a decision: Denied
    deciding: tuple[str, ...]         # "type:policy-name#index" (+ "/sid" when the statement has one)
    revision: int
    latency_seconds: float
    cached: bool = False
    session_arn: str = ""             # AssumeRole: the session it created (an ARN, not a credential)
    time: float = 0.0                 # unix seconds; 0 = when the line is written
    reason: str = ""                  # Check refused before a decision: the error code (InvalidSignatureException)

    def as_json(self) -> str:
        when = self.time or time.time()
        record = {
            "time": datetime.fromtimestamp(when, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": self.request_id,
            "rpc": self.rpc,
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "decision": self.decision,
            "deciding_statements": list(self.deciding),
            "revision": self.revision,
            "latency_ms": round(self.latency_seconds * 1000, 3),
            "cached": self.cached,
        }
        if self.session_arn:
            record["session_arn"] = self.session_arn
        if self.reason:
            record["reason"] = self.reason
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


Observer = Callable[[Sequence[DecisionEvent]], None]   # gets the events of one call together


@functools.lru_cache(maxsize=4096)
def statement_label(policy_type: str, policy_name: str, index: int, sid: str) -> str:
    return f"{policy_type}:{policy_name}#{index}" + (f"/{sid}" if sid else "")


class DecisionLog:
    """Appends lines to a file (O_APPEND, one write per line: several --workers processes can share the
    file without interleaving) or to standard output for `-`."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        if target == STDOUT:
            self._fd = sys.stdout.fileno()
            self._owned = False
        else:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._owned = True

    def write(self, events: Sequence[DecisionEvent]) -> None:
        """Append one line per event, all in one write (a batch's lines stay together)."""
        if not events:
            return
        data = "".join(event.as_json() + "\n" for event in events).encode("utf-8")
        with self._lock:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    def close(self) -> None:
        with self._lock:
            if self._owned and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
