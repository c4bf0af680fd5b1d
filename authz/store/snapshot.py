"""One immutable, indexed view of the IAM state: principal resolution, resource registry, credentials.

A Snapshot never changes after it is built; the Store swaps whole snapshots. Work that depends
only on the snapshot (compiled policies, a principal's indexed policy set, its derived context
keys) is computed on first use and remembered in bounded per-snapshot caches, so a decision
touches only the asking principal's data and never scans other principals.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, Mapping, TypeVar

from cachetools import LRUCache

from ..evaluate import CompiledPolicySet, PolicySet
from ..gateway.mapping import ResourceRecord
from ..gateway.sigv4 import Credential
from ..policy.conditions import ContextValue, normalise_context
from ..policy.model import Policy, compile_policy
from ..policy.principals import Requester, parse_requester
from .state import Account, IamState, Principal, Resource

# Context keys the store derives; a caller cannot supply or override them (spec 6).
DERIVED_KEYS = frozenset({"aws:username", "aws:userid", "aws:principalarn", "aws:principalaccount",
                          "aws:principaltype", "aws:tokenissuetime", "aws:multifactorauthpresent",
                          "aws:multifactorauthage", "aws:resourceaccount"})
DERIVED_PREFIXES = ("aws:principaltag/", "aws:resourcetag/")

PRINCIPAL_CACHE_SIZE = 50_000
POLICY_CACHE_SIZE = 20_000


class PolicyCompiler:
    """Compiled policies by document text, shared across snapshots (documents rarely change)."""

    def __init__(self, size: int = POLICY_CACHE_SIZE) -> None:
        self._cache: LRUCache[tuple[str, str], Policy] = LRUCache(size)
        self._lock = threading.Lock()

    def get(self, name: str, text: str) -> Policy:
        key = (name, text)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        import json
        pol = compile_policy(json.loads(text), name)
        with self._lock:
            self._cache[key] = pol
        return pol


K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    """Remembered pure results of one snapshot, at most `size` of them; full means start over.

    No lock and no LRU bookkeeping: single dict operations are atomic in CPython, and two threads
    computing the same entry at once both compute the same value. Clearing when full keeps the
    memory bound with no per-hit cost (the decision cache, where recency matters, is an LRU).
    """

    __slots__ = ("_data", "_size")

    def __init__(self, size: int) -> None:
        self._data: dict[K, V] = {}
        self._size = size

    def get(self, key: K, default: Any = None) -> Any:
        return self._data.get(key, default)

    def put(self, key: K, value: V) -> None:
        if len(self._data) >= self._size:
            self._data.clear()
        self._data[key] = value

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True, slots=True)
class ResolvedPrincipal:
    """Everything a decision needs about the asking principal, computed once per snapshot."""

    requester: Requester
    context: dict[str, ContextValue]        # derived keys, lower-cased names
    identity: tuple[Policy, ...]
    boundary: Policy | None
    session: tuple[Policy, ...] | None
    account: str


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Snapshot:
    """The state at one revision, with lazily built indexes. Thread-safe for readers."""

    def __init__(self, state: IamState, revision: int, compiler: PolicyCompiler, *,
                 principal_cache_size: int = PRINCIPAL_CACHE_SIZE) -> None:
        self.state = state
        self.revision = revision
        self.compiler = compiler
        self._principals: BoundedMemo[str, ResolvedPrincipal | None] = BoundedMemo(principal_cache_size)
        self._sets: BoundedMemo[tuple[str, str, str], CompiledPolicySet] = BoundedMemo(principal_cache_size)

    # ------------------------------------------------------------ principals

    def _managed(self, arn: str) -> Policy | None:
        pol = self.state.policies.get(arn)
        if pol is None:
            return None
        return self.compiler.get(arn, pol.document)

    def _identity_policies(self, p: Principal, acct: Account) -> list[Policy]:
        out: list[Policy] = []
        out.extend(self.compiler.get(f"{p.arn}#{name}", doc) for name, doc in p.inline)
        out.extend(x for x in (self._managed(a) for a in p.attached) if x is not None)
        for g in p.groups:
            group = acct.groups.get(g.lower())
            if group is None:
                continue
            out.extend(self.compiler.get(f"{group.arn}#{name}", doc) for name, doc in group.inline)
            out.extend(x for x in (self._managed(a) for a in group.attached) if x is not None)
        return out

    def resolve(self, principal: str, now: float) -> ResolvedPrincipal | None:
        """The principal's policies and derived context, or None when the store does not know it.

        Sessions expire: an expired session resolves to None (and so is implicitly denied).
        """
        hit = self._principals.get(principal, _MISS)
        if hit is not _MISS:
            if hit is not None and hit.requester.kind == "assumed-role":
                s = self.state.sessions.get(principal)
                if s is None or s.expires <= now:
                    return None
            return hit  # type: ignore[return-value]
        resolved = self._resolve(principal, now)
        self._principals.put(principal, resolved)
        return resolved

    def _resolve(self, principal: str, now: float) -> ResolvedPrincipal | None:
        r = parse_requester(principal)
        ctx: dict[str, Any] = {}
        if r.kind == "anonymous":
            return ResolvedPrincipal(r, normalise_context({"aws:userid": "anonymous",
                                                           "aws:PrincipalType": "Anonymous"}), (), None, None, "")
        acct = self.state.accounts.get(r.account)
        if acct is None:
            return None
        if r.kind == "root":
            ctx = {"aws:userid": r.account, "aws:PrincipalArn": principal, "aws:PrincipalAccount": r.account,
                   "aws:PrincipalType": "Account"}
            return ResolvedPrincipal(r, normalise_context(ctx), (), None, None, r.account)
        if r.kind == "user":
            user = acct.users.get(r.name.lower())
            if user is None or user.arn != principal:
                return None
            ctx = {"aws:username": user.name, "aws:userid": user.unique_id, "aws:PrincipalArn": user.arn,
                   "aws:PrincipalAccount": r.account, "aws:PrincipalType": "User"}
            for k, v in user.tags:
                ctx[f"aws:PrincipalTag/{k}"] = v
            req = parse_requester(principal, user.unique_id)
            boundary = self._managed(user.boundary) if user.boundary else None
            return ResolvedPrincipal(req, normalise_context(ctx), tuple(self._identity_policies(user, acct)),
                                     boundary, None, r.account)
        if r.kind == "assumed-role":
            s = self.state.sessions.get(principal)
            if s is None or s.expires <= now:
                return None
            role = acct.roles.get(r.name.lower())
            if role is None or role.arn != s.role_arn:
                return None
            userid = f"{role.unique_id}:{s.name}"
            ctx = {"aws:userid": userid, "aws:PrincipalArn": role.arn, "aws:PrincipalAccount": r.account,
                   "aws:PrincipalType": "AssumedRole", "aws:TokenIssueTime": _iso(s.issued),
                   "aws:MultiFactorAuthPresent": "false"}
            tags = {k.lower(): (k, v) for k, v in role.tags}
            tags.update({k.lower(): (k, v) for k, v in s.tags})   # session tags replace role tags (spec 3.6)
            for k, v in tags.values():
                ctx[f"aws:PrincipalTag/{k}"] = v
            req = parse_requester(principal, userid)
            boundary = self._managed(role.boundary) if role.boundary else None
            session = (self.compiler.get(f"{s.arn}#session", s.policy),) if s.policy else None
            return ResolvedPrincipal(req, normalise_context(ctx), tuple(self._identity_policies(role, acct)),
                                     boundary, session, r.account)
        return None

    # ------------------------------------------------------------ resources

    def resource(self, arn: str) -> Resource | None:
        return self.state.resources.get(arn)

    def resource_policy(self, arn: str) -> tuple[str, Policy | None]:
        """The policy acting as resource policy: a registered resource's, or a role's trust policy."""
        res = self.state.resources.get(arn)
        if res is not None and res.policy:
            return arn, self.compiler.get(f"{arn}#resource-policy", res.policy)
        if ":iam::" in arn and ":role/" in arn:
            f = arn.split(":", 5)
            acct = self.state.accounts.get(f[4]) if len(f) == 6 else None
            if acct is not None:
                role = acct.roles.get(f[5].rsplit("/", 1)[-1].lower())
                if role is not None and role.arn == arn and role.trust:
                    return arn, self.compiler.get(f"{arn}#trust", role.trust)
        return "", None

    def org_levels(self, account: str, kind: str) -> tuple[tuple[Policy, ...], ...] | None:
        acct = self.state.accounts.get(account)
        levels = None if acct is None else (acct.scp_levels if kind == "scp" else acct.rcp_levels)
        if levels is None:
            return None
        return tuple(tuple(self.compiler.get(f"{account}#{kind}{i}.{j}", d) for j, d in enumerate(level))
                     for i, level in enumerate(levels))

    def policy_set(self, principal: str, rp: ResolvedPrincipal, resource_key: str, resource_policy: Policy | None,
                   resource_account: str) -> CompiledPolicySet:
        """The indexed policy set for this principal and this resource's policy and RCPs."""
        key = (principal, resource_key, resource_account)
        hit = self._sets.get(key)
        if hit is not None:
            return hit
        scp = None if rp.requester.kind == "anonymous" else self.org_levels(rp.account, "scp")
        ps = PolicySet(identity=rp.identity, resource=resource_policy, boundary=rp.boundary, session=rp.session,
                       scp_levels=scp, rcp_levels=self.org_levels(resource_account, "rcp"))
        cps = CompiledPolicySet(ps)
        self._sets.put(key, cps)
        return cps

    # ------------------------------------------------------------ gateway support

    def by_name(self, type: str, partition: str, region: str, account: str, name: str) -> ResourceRecord | None:
        arn = self.state.resource_names.get((type, partition, region, account, name))
        return self.by_arn(arn) if arn else None

    def by_arn(self, arn: str) -> ResourceRecord | None:
        res = self.state.resources.get(arn)
        if res is None:
            return None
        return ResourceRecord(res.type, res.name, res.arn, dict(res.tags))

    def credential(self, access_key_id: str) -> Credential | None:
        key = self.state.access_keys.get(access_key_id)
        if key is None:
            return None
        expires = datetime.fromtimestamp(key.expires, tz=timezone.utc) if key.expires else None
        return Credential(key.id, key.secret, key.principal, key.session_token, expires)


_MISS: Any = object()


def caller_values(context: Mapping[str, Any], trusted: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The caller's context, normalised, without the keys the store derives (a caller can neither
    supply nor override them); `trusted` keys (this process's own gateway mapping) are kept."""
    values = normalise_context(context)
    for k in [k for k in values if k in DERIVED_KEYS or k.startswith(DERIVED_PREFIXES)]:
        del values[k]
    if trusted:
        values.update(normalise_context(trusted))
    return values
