"""The results of access analysis: who can (Reach), what a principal can (Grant), what a change does (Change)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Status(IntEnum):
    """Whether a (principal, action, resource class) is allowed; ordered from least to most access."""

    NO = 0              # no request is allowed
    CONDITIONAL = 1     # some requests are allowed, depending on the request context
    YES = 2             # allowed whatever the request context

    @property
    def label(self) -> str:
        return {0: "no", 1: "conditional", 2: "yes"}[int(self)]


@dataclass(frozen=True)
class Reach:
    """One principal that can be allowed, and how: `via` lists the roles assumed in order (empty: directly)."""

    principal: str
    kind: str                                   # user | role | root | anonymous
    via: tuple[str, ...] = ()
    conditional: bool = False
    conditions: tuple[str, ...] = ()            # the condition keys that decide it (when conditional)
    statements: tuple[dict[str, Any], ...] = ()  # the allowing statements of the last step

    def as_json(self) -> dict[str, Any]:
        return {"principal": self.principal, "kind": self.kind, "via": list(self.via),
                "conditional": self.conditional, "conditions": list(self.conditions),
                "statements": [dict(s) for s in self.statements]}


@dataclass(frozen=True)
class WhoCan:
    """Every principal that can be allowed `action` on `resource`."""

    action: str
    resource: str
    principals: list[Reach] = field(default_factory=list)
    owner_root: str = ""        # the owning account's root: always allowed (not listed among principals)

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "resource": self.resource,
                "principals": [r.as_json() for r in self.principals], "ownerRoot": self.owner_root}


@dataclass(frozen=True)
class Grant:
    """Actions a principal is allowed on one group of resources: the resource patterns of the allowing
    statements, minus the explicit denies that cut into them."""

    actions: tuple[str, ...]
    resources: tuple[str, ...]                  # Resource patterns of the allowing statements
    denied: tuple[str, ...] = ()                # Resource patterns of the Deny statements that cut into them
    conditional: bool = False
    conditions: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()              # one allowed ARN of each resource class

    def as_json(self) -> dict[str, Any]:
        return {"actions": list(self.actions), "resources": list(self.resources), "except": list(self.denied),
                "conditional": self.conditional, "conditions": list(self.conditions),
                "examples": list(self.examples)}


@dataclass(frozen=True)
class Access:
    """What one principal is allowed (for a role: a session of the role, without a session policy)."""

    principal: str
    kind: str
    grants: list[Grant] = field(default_factory=list)
    known: bool = True                          # False: the store does not know the principal (nothing allowed)

    def as_json(self) -> dict[str, Any]:
        return {"principal": self.principal, "kind": self.kind, "known": self.known,
                "allowed": [g.as_json() for g in self.grants]}


@dataclass(frozen=True)
class Change:
    """One (principal, action, resource class) whose status differs between two states."""

    principal: str
    action: str
    resource: str                               # a representative ARN of the class
    matches: tuple[str, ...]                    # the patterns the class is defined by (those it matches)
    old: Status
    new: Status

    @property
    def widens(self) -> bool:
        return self.new > self.old

    def as_json(self) -> dict[str, Any]:
        return {"principal": self.principal, "action": self.action, "resource": self.resource,
                "matches": list(self.matches), "old": self.old.label, "new": self.new.label}


@dataclass(frozen=True)
class AccessDiff:
    """What NEW allows that OLD did not (`added`, including conditional to unconditional) and the reverse."""

    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)

    @property
    def grants_new_access(self) -> bool:
        return bool(self.added)

    def as_json(self) -> dict[str, Any]:
        return {"newAccess": bool(self.added), "added": [c.as_json() for c in self.added],
                "removed": [c.as_json() for c in self.removed]}

    def summary(self, limit: int = 10) -> str:
        """A short text for error messages: the first `limit` additions."""
        lines = [f"{c.principal} {c.action} {c.resource} ({c.old.label} -> {c.new.label})" for c in self.added[:limit]]
        more = f"; and {len(self.added) - limit} more" if len(self.added) > limit else ""
        return "; ".join(lines) + more
