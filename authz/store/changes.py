"""The change feed's vocabulary: what one applied change touched, and the change record listeners receive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

# Dependency keys. Everything a decision reads from the state is named by one of these, and every
# change names the ones it touched: a remembered decision (or principal, or policy set) is reused only
# while none of the keys it read was touched since it was computed (see cache.Validity).
#   a:ACCOUNT                      an account's own facts: existence, organization, SCPs and RCPs
#   p:ACCOUNT:KIND:lower-case name a user, group or role, whatever its path or unique id
#   m:ARN                          a managed policy (any version, its default, its existence)
#   r:ARN                          a registered resource (existence, tags, resource policy)
#   k:ACCESS-KEY-ID                an access key or a role session (its credentials)


def account_dep(account: str) -> str:
    return "a:" + account


def principal_dep(account: str, kind: str, name: str) -> str:
    return f"p:{account}:{kind}:{name.lower()}"


def policy_dep(arn: str) -> str:
    return "m:" + arn


def resource_dep(arn: str) -> str:
    return "r:" + arn


def key_dep(access_key_id: str) -> str:
    return "k:" + access_key_id


@dataclass(frozen=True, slots=True)
class Touched:
    """What one change touched, as dependency keys (see above); `everything` for a change that may touch
    anything (a bundle load): every remembered decision is dropped."""

    deps: frozenset[str] = frozenset()
    everything: bool = False

    @staticmethod
    def of(*keys: str | Iterable[str]) -> "Touched":
        out: set[str] = set()
        for k in keys:
            if isinstance(k, str):
                out.add(k)
            else:
                out.update(k)
        return Touched(frozenset(out))

    def __or__(self, other: "Touched") -> "Touched":
        return Touched(self.deps | other.deps, self.everything or other.everything)

    def __bool__(self) -> bool:
        return self.everything or bool(self.deps)


NOTHING = Touched()
EVERYTHING = Touched(everything=True)


@dataclass(frozen=True, slots=True)
class Change:
    """One applied change as listeners receive it: the revision it produced (the change log's sequence
    number: the same in every process that applies it), what kind of change it was and what it touched.
    It carries no op fields: those may hold secrets (access keys, session credentials)."""

    revision: int
    kind: str                   # the op's name (CreatePrincipal, ...) or LoadBundle
    touched: Touched
