"""Access analysis entry points: bundle loading, the Analyzer and its who-can, access-of and diff queries."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Union

from ..store.bundle import load_bundle
from ..store.snapshot import PolicyCompiler, Snapshot
from ..store.state import IamState
from .model import Access, AccessDiff, WhoCan

_DATA = Path(__file__).resolve().parent.parent / "policy" / "data" / "actions.json"


@lru_cache(maxsize=1)
def _actions() -> tuple[str, ...]:
    services = json.loads(_DATA.read_text())["services"]
    names = [f"kinesisvideo:{a}" for a in services["kinesisvideo"]["actions"]]
    return tuple(sorted(names)) + ("sts:AssumeRole",)


ACTIONS: tuple[str, ...] = _actions()


def snapshot_of(state: IamState) -> Snapshot:
    """A snapshot of `state` with its own compiled-policy cache (revision 0)."""
    return Snapshot(state, 0, PolicyCompiler())


def load(directory: Path) -> Snapshot:
    """Load a bundle directory as the sidecar does (store/bundle.py); raises BundleError naming the fault."""
    return snapshot_of(load_bundle(Path(directory)))


class Analyzer:
    """Analysis of one snapshot, remembering principal groups and per-group answers between queries."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def who_can(self, action: str, resource: str) -> WhoCan:
        raise NotImplementedError

    def access_of(self, principal: str) -> Access:
        raise NotImplementedError


Source = Union[Snapshot, IamState, Analyzer]


def analyzer(source: Source) -> Analyzer:
    if isinstance(source, Analyzer):
        return source
    return Analyzer(source if isinstance(source, Snapshot) else snapshot_of(source))


def who_can(source: Source, action: str, resource: str) -> WhoCan:
    """Every principal that can be allowed `action` on `resource` (directly or through role chains)."""
    return analyzer(source).who_can(action, resource)


def access_of(source: Source, principal: str) -> Access:
    """What `principal` is allowed: a user, a role (its sessions, no session policy) or an account root."""
    return analyzer(source).access_of(principal)


def diff(old: Source, new: Source) -> AccessDiff:
    """The (principal, action, resource class) access NEW allows and OLD did not, and the reverse."""
    raise NotImplementedError
