"""The Store facade: one object for callers, each call handed to the part that owns it (holder, decisions, STS, admin).

The parts, and the one way their arrows point (facade -> parts -> holder -> snapshot and state):
holder.py publishes every new snapshot (reload, worker sync, one committed op, the bundle watcher);
decisions.py decides against it; sts.py decides AssumeRole and commits its session; admin.py commits
admin ops and answers the admin reads.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..policy.validate import ValidationReport
from .admin import Admin
from .cache import Deps
from .changes import Change
from .decisions import Answer, Decisions, PreparedContext
from .errors import QuotaExceeded, StoreError
from .holder import SnapshotHolder, StoreConfig, StoreStatus
from .ops import Op
from .snapshot import Snapshot
from .state import IamState, ManagedPolicy, Principal
from .sts import SessionGrant, Sts


class Store:
    """The store's parts behind the methods its callers (servicers, the CLI, the bench, tests) use."""

    def __init__(self, config: StoreConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._holder = SnapshotHolder(config, clock)
        self._decisions = Decisions(self._holder)
        self._sts = Sts(self._holder, self._decisions)
        self._admin = Admin(self._holder)
        self.config = config
        self.compiler = self._holder.compiler
        self.cache = self._holder.cache

    @property
    def clock(self) -> Callable[[], float]:
        """The store's clock (every part reads the holder's; setting it here sets it for all of them)."""
        return self._holder.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._holder.clock = clock

    # ------------------------------------------------------------ life cycle (holder.py)

    def open(self, load: bool = True) -> None:
        self._holder.open(load)

    def close(self) -> None:
        self._holder.close()

    def on_swap(self, listener: Callable[[Snapshot], None]) -> None:
        self._holder.on_swap(listener)

    def on_change(self, listener: Callable[[Snapshot, Change], None]) -> None:
        self._holder.on_change(listener)

    def still_valid(self, deps: Deps | None, since: int) -> bool:
        """Whether an answer computed at revision `since` that read `deps` (Answer.deps) holds now."""
        return deps is not None and self._holder.validity.valid(deps, since, self._holder.revision)

    def on_reload(self, hook: Callable[[], None]) -> None:
        self._holder.on_reload(hook)

    @property
    def ready(self) -> bool:
        return self._holder.ready

    @property
    def snapshot(self) -> Snapshot:
        return self._holder.snapshot

    @property
    def revision(self) -> int:
        return self._holder.revision

    def reload(self) -> tuple[bool, str]:
        return self._holder.reload()

    def sync(self) -> bool:
        return self._holder.sync()

    def follow(self, stop: threading.Event, interval: float) -> None:
        self._holder.follow(stop, interval)

    def publish_bundle(self, directory: Path, admit: Callable[[IamState, IamState], str] | None = None
                       ) -> tuple[int, bool]:
        return self._holder.publish_bundle(directory, admit)

    def status(self) -> StoreStatus:
        return self._holder.status()

    # ------------------------------------------------------------ decisions (decisions.py)

    def prepare_context(self, context: Mapping[str, Any], trusted_context: Mapping[str, Any] | None = None
                        ) -> PreparedContext:
        return self._decisions.prepare_context(context, trusted_context)

    def authorize(self, principal: str, action: str, resource: str, context: Mapping[str, Any] | None = None, *,
                  explain: bool = False, trusted_context: Mapping[str, Any] | None = None,
                  prepared: PreparedContext | None = None, access_key_id: str = "") -> Answer:
        return self._decisions.authorize(principal, action, resource, context, explain=explain,
                                         trusted_context=trusted_context, prepared=prepared,
                                         access_key_id=access_key_id)

    # ------------------------------------------------------------ AssumeRole (sts.py)

    def assume_role(self, caller: str, role_arn: str, session_name: str, duration_seconds: int = 0,
                    session_policy: str | None = None, tags: Mapping[str, str] | None = None,
                    context: Mapping[str, Any] | None = None, external_id: str = "") -> SessionGrant:
        return self._sts.assume_role(caller, role_arn, session_name, duration_seconds, session_policy, tags,
                                     context, external_id)

    def revoke_sessions(self, account: str, role: str) -> float:
        return self._sts.revoke_sessions(account, role)

    # ------------------------------------------------------------ admin operations (admin.py)

    def apply(self, op: Op | Mapping[str, Any]) -> IamState:
        return self._admin.apply(op)

    def create_policy(self, account: str, name: str, document: str, path: str = "/", description: str = ""
                      ) -> ManagedPolicy:
        return self._admin.create_policy(account, name, document, path, description)

    def create_access_key(self, account: str, user: str) -> tuple[str, str, str]:
        return self._admin.create_access_key(account, user)

    def update_access_key(self, access_key_id: str, status: str) -> None:
        self._admin.update_access_key(access_key_id, status)

    def create_principal(self, kind: str, account: str, name: str, **fields: Any) -> Principal:
        return self._admin.create_principal(kind, account, name, **fields)

    def register_resource(self, account: str, region: str, rtype: str, name: str, arn: str = "",
                          tags: Mapping[str, str] | None = None, policy: str | None = None) -> str:
        return self._admin.register_resource(account, region, rtype, name, arn, tags, policy)

    def policy(self, arn: str) -> ManagedPolicy:
        return self._admin.policy(arn)

    def principal(self, account: str, kind: str, name: str) -> Principal:
        return self._admin.principal(account, kind, name)

    def attachment_count(self, arn: str) -> int:
        return self._admin.attachment_count(arn)

    @staticmethod
    def validate_policy(policy_type: str, document: str) -> ValidationReport:
        return Admin.validate_policy(policy_type, document)


__all__ = ["Store", "StoreConfig", "Answer", "SessionGrant", "StoreStatus", "StoreError", "QuotaExceeded"]
