"""One immutable, indexed view of the IAM state: principal resolution, resource registry, credentials.

A Snapshot never changes after it is built; the Store swaps whole snapshots. Work that depends
only on the state (compiled policies, a principal's indexed policy set, its derived context keys)
is computed on first use and remembered in bounded memos shared by successive snapshots: each entry
names the dependency keys it read (changes.py) and is reused by a later snapshot only while no change
touched them (cache.Validity). A decision touches only the asking principal's data and never scans
other principals.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, Mapping, TypeVar

from cachetools import LRUCache

from ..policy.arn import ACCOUNT, RESOURCE, split_arn
from ..evaluate import CompiledPolicySet, PolicySet
from ..policy.conditions import ContextValue, normalise_context
from ..policy.model import Policy, compile_policy
from ..policy.principals import Requester, parse_requester
from ..records import Credential, ResourceRecord
from .cache import Deps, Validity
from .changes import account_dep, key_dep, policy_dep, principal_dep, resource_dep
from .state import (AccessKey, Account, IamState, Principal, Resource, inline_policy_name, org_policy_name,
                    principal_of_arn, resource_policy_name, session_policy_name, trust_policy_name)

# Context keys the store derives (spec 6): the single list of them. A caller can neither supply nor
# override any of them: its copies are dropped, in any letter case, and the store sets what AWS would
# (or leaves the key absent, as AWS does when it does not apply). Principal and organization facts,
# how the request came (directly, never through an AWS service), and session and STS facts all come
# from the store's own records; the caller's word on them is never taken.
DERIVED_KEYS = frozenset({
    # who is asking
    "aws:username", "aws:userid", "aws:principalarn", "aws:principalaccount", "aws:principaltype",
    "aws:principalisawsservice", "aws:principalservicename", "aws:principalservicenameslist",
    "aws:principalorgid", "aws:principalorgpaths", "aws:principalorgmasteraccount",
    # how its credentials were obtained
    "aws:tokenissuetime", "aws:multifactorauthpresent", "aws:multifactorauthage", "aws:sourceidentity",
    "aws:federatedprovider", "aws:assumedroot", "aws:ec2instancesourcevpc", "aws:ec2instancesourceprivateipv4",
    "aws:rolesessionname",
    # whether an AWS service forwards the call (never: callers reach the store directly)
    "aws:viaawsservice", "aws:calledvia", "aws:calledviafirst", "aws:calledvialast",
    "aws:sourcearn", "aws:sourceaccount", "aws:sourceorgid", "aws:sourceorgpaths", "aws:sourceowner",
    # the resource's owner
    "aws:resourceaccount", "aws:resourceorgid", "aws:resourceorgpaths",
})
DERIVED_PREFIXES = ("aws:principaltag/", "aws:resourcetag/",
                    "sts:")        # STS keys exist only for the AssumeRole request, derived from it


PRINCIPAL_CACHE_SIZE = 50_000
POLICY_CACHE_SIZE = 20_000


class PolicyCompiler:
    """Compiled policies by name and document text, shared across snapshots (documents rarely change).

    Documents are compiled when they are validated (`adopt`, from the validator's parse: see
    state.check_policy), so the first decision after an admin write or a reload compiles nothing;
    `get` compiles what is not there (evicted, or left to it by a bulk load) on first use. Compiled
    policies are immutable and shared by every snapshot and thread.
    """

    def __init__(self, size: int = POLICY_CACHE_SIZE) -> None:
        self._cache: LRUCache[tuple[str, str], Policy] = LRUCache(size)
        self._lock = threading.Lock()
        self.compiled = 0           # documents compiled, by adopt or get (for Status and the benchmarks)

    def get(self, name: str, text: str) -> Policy:
        key = (name, text)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        return self._put(key, compile_policy(json.loads(text), name))

    def adopt(self, name: str, text: str, document: Any, *, evict: bool = True) -> bool:
        """Compile a validated document from its parse, unless it is compiled already; True when this
        call compiled it. With `evict` False it is compiled only while the cache has room, so a bulk
        load never pushes out what decisions are using."""
        key = (name, text)
        with self._lock:
            if self._cache.get(key) is not None:
                return False
            if not evict and self._cache.currsize >= self._cache.maxsize:
                return False
        self._put(key, compile_policy(document, name))
        return True

    def _put(self, key: tuple[str, str], policy: Policy) -> Policy:
        with self._lock:
            self._cache[key] = policy
            self.compiled += 1
        return policy

    def __len__(self) -> int:
        return len(self._cache)


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
    # The identity the decision is about: the principal ARN, and for a role session the access key of
    # that session (sessions with one ARN are distinct identities). Every memo of decisions keys by it.
    key: tuple[str, str] = ("", "")
    expires: float = math.inf               # a session's end
    deps: Deps = ()                          # the dependency keys its resolution read (changes.py)


@dataclass(frozen=True, slots=True)
class Unresolved:
    """A principal the store knows but will not decide for as asked; the decision is an implicit deny.

    `reason` becomes the decision's decided_by; `note` says what is wrong and what to do about it.
    """

    reason: str
    note: str
    until: float = math.inf                 # the same answer holds until then (the store's clock)


AMBIGUOUS_SESSION = "ambiguous_session"
CREDENTIAL_MISMATCH = "credential_mismatch"
INACTIVE_KEY = "inactive_key"
REVOKED_SESSION = "revoked_session"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


Resolution = ResolvedPrincipal | Unresolved | None
# A memo entry: the value, the dependency keys it read, and the revision it is known to hold at.
_PrincipalEntry = tuple[Resolution, Deps, int]
_SetEntry = tuple[CompiledPolicySet, Deps, int]
# A policy set's shape: the identities of the Policy objects in it, field by field (see Memos.compiled).
_Shape = tuple[Any, ...]


def _ids(policies: tuple[Policy, ...] | None) -> tuple[int, ...] | None:
    return None if policies is None else tuple(map(id, policies))


def _levels(levels: tuple[tuple[Policy, ...], ...] | None) -> tuple[tuple[int, ...], ...] | None:
    return None if levels is None else tuple(tuple(map(id, level)) for level in levels)


def policy_set_shape(ps: PolicySet) -> _Shape:
    """The identity of every Policy object in `ps`, in place: two sets of the same shape hold the same objects."""
    return (_ids(ps.identity), id(ps.resource), id(ps.boundary), _ids(ps.session), _levels(ps.scp_levels),
            _levels(ps.rcp_levels))


class Memos:
    """Resolved principals and indexed policy sets, shared by successive snapshots (see the module
    docstring); `validity` says which entries a newer snapshot may still use."""

    def __init__(self, validity: Validity, size: int = PRINCIPAL_CACHE_SIZE) -> None:
        self.validity = validity
        self.size = size
        self.principals: BoundedMemo[tuple[str, str], _PrincipalEntry] = BoundedMemo(size)
        self.sets: BoundedMemo[tuple[tuple[str, str], str, str], _SetEntry] = BoundedMemo(size)
        # Indexed policy sets by shape, shared by every principal whose policies are the same objects (the
        # compiler hands out one Policy per name and text): 10,000 users of one group index its policies
        # once, and after a change to the group, once again rather than 10,000 times. Each entry keeps its
        # PolicySet, so the objects whose ids make its key stay alive (an id is never reused while the entry
        # lives). A CompiledPolicySet reads nothing but its policies, so an entry never goes stale.
        self.compiled: BoundedMemo[_Shape, tuple[PolicySet, CompiledPolicySet]] = BoundedMemo(size)

    def clear(self) -> None:
        """Forget every entry (a change that may touch anything: the memory goes now)."""
        self.principals = BoundedMemo(self.size)
        self.sets = BoundedMemo(self.size)
        self.compiled = BoundedMemo(self.size)


class Snapshot:
    """The state at one revision, with lazily built indexes. Thread-safe for readers."""

    def __init__(self, state: IamState, revision: int, compiler: PolicyCompiler, memos: Memos | None = None
                 ) -> None:
        self.state = state
        self.revision = revision
        self.compiler = compiler
        self.memos = memos if memos is not None else Memos(Validity())

    # ------------------------------------------------------------ principals

    def _managed(self, arn: str, deps: list[str]) -> Policy | None:
        deps.append(policy_dep(arn))
        pol = self.state.policies.get(arn)
        if pol is None:
            return None
        return self.compiler.get(arn, pol.document)

    def _identity_policies(self, p: Principal, acct: Account, deps: list[str]) -> list[Policy]:
        out: list[Policy] = []
        out.extend(self.compiler.get(inline_policy_name(p.arn, name), doc) for name, doc in p.inline)
        out.extend(x for x in (self._managed(a, deps) for a in p.attached) if x is not None)
        for g in p.groups:
            deps.append(principal_dep(acct.id, "group", g))
            group = acct.groups.get(g.lower())
            if group is None:
                continue
            out.extend(self.compiler.get(inline_policy_name(group.arn, name), doc) for name, doc in group.inline)
            out.extend(x for x in (self._managed(a, deps) for a in group.attached) if x is not None)
        return out

    def resolve(self, principal: str, now: float, access_key_id: str = "") -> ResolvedPrincipal | Unresolved | None:
        """The principal's policies and derived context, or None when the store does not know it.

        `access_key_id` names the credential the request was made with (the SigV4 path always knows
        it). A role session is resolved through its access key: without one, the session ARN must
        name exactly one live session, or the answer is Unresolved (ambiguous), never a guess.
        Sessions expire: an expired session resolves to None (and so is implicitly denied).
        """
        if ":assumed-role/" in principal and principal.startswith("arn:"):
            found = self._session(principal, access_key_id, now)
            if not isinstance(found, str):
                return found
            memo_key = (principal, found)
        else:
            memo_key = (principal, access_key_id)
        memos = self.memos
        entry: _PrincipalEntry | None = memos.principals.get(memo_key)
        revision = self.revision
        if entry is not None and entry[2] != revision:
            if memos.validity.valid(entry[1], entry[2], revision):
                if entry[2] < revision:     # still valid now: later lookups take the short way
                    memos.principals.put(memo_key, (entry[0], entry[1], revision))
            else:
                entry = None
        if entry is None:
            deps: list[str] = []
            hit = self._resolve(principal, memo_key[1], deps)
            memos.principals.put(memo_key, (hit, tuple(deps), revision))
        else:
            hit = entry[0]
        if isinstance(hit, ResolvedPrincipal) and hit.expires <= now:
            return None
        return hit

    def _session(self, principal: str, access_key_id: str, now: float) -> str | Unresolved | None:
        """The access key id of the live session `principal` names (through `access_key_id` when given)."""
        sessions = self.state.sessions
        if access_key_id:
            s = sessions.get(access_key_id)
            if s is None:
                return None if access_key_id not in self.state.access_keys else Unresolved(
                    CREDENTIAL_MISMATCH, f"access key {access_key_id} is not the credential of a role session")
            if s.arn != principal:
                return Unresolved(CREDENTIAL_MISMATCH, f"access key {access_key_id} is the credential of another "
                                                       "session, not of this principal")
            return access_key_id if s.expires > now else None
        live = [k for k in self.state.session_arns.get(principal, ()) if sessions[k].expires > now]
        if not live:
            return None
        if len(live) > 1:
            return Unresolved(AMBIGUOUS_SESSION,
                              f"{len(live)} live sessions have the ARN {principal[:200]} (the same role and session "
                              "name), each with its own session policy, tags and issue time; name the credential "
                              "with access_key_id", min(sessions[k].expires for k in live))
        return live[0]

    def _resolve(self, principal: str, access_key_id: str, deps: list[str]) -> Resolution:
        """Resolve `principal`, appending to `deps` every dependency key the answer read."""
        r = parse_requester(principal)
        ctx: dict[str, Any] = {"aws:ViaAWSService": "false"}    # every call reaches the store directly
        if r.kind == "anonymous":
            if access_key_id:
                return Unresolved(CREDENTIAL_MISMATCH, "an anonymous request carries no credential")
            ctx.update({"aws:userid": "anonymous", "aws:PrincipalType": "Anonymous",
                        "aws:PrincipalAccount": "anonymous"})
            return ResolvedPrincipal(r, normalise_context(ctx), (), None, None, "", (principal, ""))
        deps.append(account_dep(r.account))
        if access_key_id:
            deps.append(key_dep(access_key_id))
        acct = self.state.accounts.get(r.account)
        if acct is None:
            return None
        ctx["aws:PrincipalIsAWSService"] = "false"
        ctx["aws:PrincipalAccount"] = r.account
        if acct.org_id:
            ctx["aws:PrincipalOrgID"] = acct.org_id
            ctx["aws:PrincipalOrgPaths"] = list(acct.org_paths)
        if r.kind == "root":
            if access_key_id:
                return Unresolved(CREDENTIAL_MISMATCH, f"access key {access_key_id} does not belong to the account "
                                                       "root (the store keeps no root keys)")
            ctx.update({"aws:userid": r.account, "aws:PrincipalArn": principal, "aws:PrincipalType": "Account"})
            return ResolvedPrincipal(r, normalise_context(ctx), (), None, None, r.account, (principal, ""),
                                     deps=tuple(deps))
        if r.kind == "user":
            deps.append(principal_dep(r.account, "user", r.name))
            user = acct.users.get(r.name.lower())
            if user is None or user.arn != principal:
                return None
            if access_key_id:
                key = self.state.access_keys.get(access_key_id)
                if key is None or key.principal != user.arn or key.owner_id != user.unique_id:
                    return Unresolved(CREDENTIAL_MISMATCH, f"access key {access_key_id} is not a key of {user.arn}")
                if key.status != "Active":
                    return Unresolved(INACTIVE_KEY, f"access key {access_key_id} is Inactive (UpdateAccessKey)")
            ctx.update({"aws:username": user.name, "aws:userid": user.unique_id, "aws:PrincipalArn": user.arn,
                        "aws:PrincipalType": "User"})
            for k, v in user.tags:
                ctx[f"aws:PrincipalTag/{k}"] = v
            req = parse_requester(principal, user.unique_id)
            boundary = self._managed(user.boundary, deps) if user.boundary else None
            identity = tuple(self._identity_policies(user, acct, deps))
            return ResolvedPrincipal(req, normalise_context(ctx), identity, boundary, None, r.account, (principal, ""),
                                     deps=tuple(deps))
        if r.kind == "assumed-role":
            s = self.state.sessions.get(access_key_id)
            if s is None:
                return None
            deps.append(principal_dep(r.account, "role", r.name))
            role = acct.roles.get(r.name.lower())
            # The session belongs to the role it was issued for: the same ARN and the same unique id.
            if role is None or role.arn != s.role_arn or role.unique_id != s.role_id:
                return None
            if s.issued < role.revoked_before:
                return Unresolved(REVOKED_SESSION, f"the sessions of {role.arn} issued before "
                                                   f"{_iso(role.revoked_before)} were revoked (RevokeSessions); "
                                                   "assume the role again")
            userid = f"{role.unique_id}:{s.name}"
            ctx.update({"aws:userid": userid, "aws:PrincipalArn": role.arn, "aws:PrincipalType": "AssumedRole",
                        "aws:TokenIssueTime": _iso(s.issued), "aws:MultiFactorAuthPresent": "false"})
            tags = {k.lower(): (k, v) for k, v in role.tags}
            tags.update({k.lower(): (k, v) for k, v in s.tags})   # session tags replace role tags (spec 3.6)
            for k, v in tags.values():
                ctx[f"aws:PrincipalTag/{k}"] = v
            req = parse_requester(principal, userid)
            boundary = self._managed(role.boundary, deps) if role.boundary else None
            session = (self.compiler.get(session_policy_name(s.arn), s.policy),) if s.policy else None
            identity = tuple(self._identity_policies(role, acct, deps))
            return ResolvedPrincipal(req, normalise_context(ctx), identity, boundary, session, r.account,
                                     (principal, access_key_id), s.expires, tuple(deps))
        return None

    # ------------------------------------------------------------ resources

    def resource(self, arn: str) -> Resource | None:
        return self.state.resources.get(arn)

    def resource_policy(self, arn: str) -> tuple[str, Policy | None]:
        """The policy acting as resource policy: a registered resource's, or a role's trust policy.
        What it reads is in resource_deps(arn)."""
        res = self.state.resources.get(arn)
        if res is not None and res.policy:
            return arn, self.compiler.get(resource_policy_name(arn), res.policy)
        role = principal_of_arn(self.state, "role", arn) if ":role/" in arn else None
        if role is not None and role.trust:
            return arn, self.compiler.get(trust_policy_name(arn), role.trust)
        return "", None

    def org_levels(self, account: str, kind: str) -> tuple[tuple[Policy, ...], ...] | None:
        acct = self.state.accounts.get(account)
        levels = None if acct is None else (acct.scp_levels if kind == "scp" else acct.rcp_levels)
        if levels is None:
            return None
        return tuple(tuple(self.compiler.get(org_policy_name(account, kind, i, j), d) for j, d in enumerate(level))
                     for i, level in enumerate(levels))

    def policy_set(self, principal: str, rp: ResolvedPrincipal, resource_key: str, resource_policy: Policy | None,
                   resource_account: str, resource_deps: Deps) -> CompiledPolicySet:
        """The indexed policy set for this principal and this resource's policy and RCPs (`resource_deps`:
        what the resource policy and the resource account read, from resource_deps)."""
        key = (rp.key, resource_key, resource_account)
        memos = self.memos
        revision = self.revision
        entry: _SetEntry | None = memos.sets.get(key)
        if entry is not None:
            if entry[2] == revision:
                return entry[0]
            deps = entry[1]
            if memos.validity.valid(deps, entry[2], revision):
                if entry[2] < revision:
                    memos.sets.put(key, (entry[0], deps, revision))
                return entry[0]
        scp = None if rp.requester.kind == "anonymous" else self.org_levels(rp.account, "scp")
        ps = PolicySet(identity=rp.identity, resource=resource_policy, boundary=rp.boundary, session=rp.session,
                       scp_levels=scp, rcp_levels=self.org_levels(resource_account, "rcp"))
        shape = policy_set_shape(ps)
        shared = memos.compiled.get(shape)
        if shared is None:
            cps = CompiledPolicySet(ps)
            memos.compiled.put(shape, (ps, cps))
        else:
            cps = shared[1]
        memos.sets.put(key, (cps, rp.deps + resource_deps, revision))
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
        """The credential SigV4 verifies a request against, or None: unknown, Inactive, or no longer bound
        to the principal it was issued for (its user or its session's role is gone or was re-created)."""
        key = self.state.access_keys.get(access_key_id)
        if key is None or key.status != "Active" or not self._bound(key):
            return None
        expires = datetime.fromtimestamp(key.expires, tz=timezone.utc) if key.expires else None
        return Credential(key.id, key.secret, key.principal, None, expires, session_token_sha256=key.token_sha256)

    def _bound(self, key: AccessKey) -> bool:
        s = self.state.sessions.get(key.id)
        owner = (principal_of_arn(self.state, "role", s.role_arn) if s is not None
                 else principal_of_arn(self.state, "user", key.principal))
        return owner is not None and owner.unique_id == key.owner_id and (s is None or s.role_id == key.owner_id)


class CredentialLookup:
    """Snapshot.credential for one request, remembering the access key it handed out: after SigV4
    verification succeeded, `access_key_id` names the credential the request was signed with (the
    store resolves a role session through it)."""

    __slots__ = ("_snapshot", "access_key_id")

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.access_key_id = ""

    def __call__(self, access_key_id: str) -> Credential | None:
        credential = self._snapshot.credential(access_key_id)
        self.access_key_id = access_key_id if credential is not None else ""
        return credential


def resource_deps(arn: str, resource_account: str) -> Deps:
    """The dependency keys a decision on resource `arn` reads besides the principal's: the resource's
    registration (existence, tags, resource policy), a role's trust policy when `arn` names a role, and
    the resource account's organization facts (org id and paths, RCPs)."""
    deps = [resource_dep(arn), account_dep(resource_account)]
    if ":role/" in arn:
        f = split_arn(arn)
        if f is not None:
            deps.append(principal_dep(f[ACCOUNT], "role", f[RESOURCE].rsplit("/", 1)[-1]))
    return tuple(deps)


def caller_values(context: Mapping[str, Any], trusted: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The caller's context, normalised, without the keys the store derives (a caller can neither
    supply nor override them); `trusted` keys (this process's own gateway mapping) are kept."""
    values = normalise_context(context)
    for k in [k for k in values if k in DERIVED_KEYS or k.startswith(DERIVED_PREFIXES)]:
        del values[k]
    if trusted:
        values.update(normalise_context(trusted))
    return values
