"""Access analysis on the exact engine: who can act on a resource, what a principal can do, what a change allows.

The stable API (results are plain frozen dataclasses with `as_json()`):

    snap = load(Path("examples/bundle"))                 # a bundle directory, loaded as the sidecar loads it
    who_can(snap, "kinesisvideo:PutMedia", arn)  -> WhoCan     (.principals: list[Reach])
    access_of(snap, principal_arn)               -> Access     (.grants: list[Grant])
    diff(old_snap, new_snap)                     -> AccessDiff (.added, .removed: list[Change]; .grants_new_access)

Every function also takes an IamState (wrapped in a fresh Snapshot) or an Analyzer (which remembers
groups and per-group answers across calls on one snapshot: the sidecar keeps one per snapshot).
"""

from __future__ import annotations

from .model import Access, AccessDiff, Change, Grant, Reach, Status, WhoCan
from .diffing import diff
from .engine import ACTIONS, Analyzer, Source, access_of, load, snapshot_of, who_can

__all__ = ["ACTIONS", "Access", "AccessDiff", "Analyzer", "Change", "Grant", "Reach", "Source", "Status", "WhoCan",
           "access_of", "diff", "load", "snapshot_of", "who_can"]
