"""Decisions: one request decided against the current snapshot, through the decision cache, with derived context."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Hashable, Mapping

from ..policy.arn import account_of
from ..evaluate import CLOCK_KEYS, NO_CLOCK_EDGES, Decision, Result, decide
from ..policy.errors import RequestError
from ..requests import check_context, check_target
from .cache import Deps
from .changes import account_dep
from .holder import SnapshotHolder
from .snapshot import ResolvedPrincipal, Snapshot, Unresolved, caller_values, resource_deps

MAX_ACCESS_KEY_ID_CHARS = 128        # AuthorizeRequest.access_key_id (IAM: 16-128)
# Once the decision cache is full, a decision is kept only on its key's second sighting (the hashes of at most
# this many keys seen once are remembered): requests that never repeat then neither evict the decisions that do
# nor leave the garbage collector a young generation of cache entries to walk (docs/performance.md, "The cold
# path profiled"). Until the cache first fills, and again after it is emptied, every decision is kept.
CACHE_DOORKEEPER_KEYS = 65_536


@dataclass(frozen=True)
class Answer:
    """A Result with where it came from: the revision, whether a cache gave it, the clock window it holds for."""

    result: Result
    revision: int
    cached: bool
    principal_known: bool
    # While valid_from <= the store's clock < valid_until, the same request against the same revision
    # gets this answer: always, or only within the current second when the decision read aws:CurrentTime
    # or aws:EpochTime from the clock, and only until a role session ends. Callers that keep answers use it.
    valid_until: float = math.inf
    valid_from: float = -math.inf
    # The dependency keys the decision read (changes.py): it holds at a later revision while no change
    # touched them (cache.Validity). None: it holds at its own revision only (an unknown principal, or
    # one the store will not decide for: cheap to answer again).
    deps: Deps | None = None
    # The next instant (the store's clock) at which the clock alone could change this decision, with
    # nothing else changing: the next edge of a time condition it read from the clock (ClockEdges), or
    # the end of the principal's session, whichever comes first; inf when the clock cannot change it.
    # Watch re-decides then; the Envoy path tells the gateway (x-authz-valid-for).
    changes_at: float = math.inf
    expires: float = math.inf     # the end of the principal's session (inf: not a session)


class PreparedContext:
    """A caller's request context, checked against the request limits and normalised, with the keys the
    store derives removed. Immutable once built, so one can serve any number of requests that carry
    the same context (the gRPC servicer keeps them per distinct context).

    `fixed_clock`: the clock keys (aws:CurrentTime, aws:EpochTime) the untrusted caller gave, whose
    values then stay what it said; those a trusted gateway mapping gave are read from the clock."""

    __slots__ = ("values", "fixed_clock")

    def __init__(self, values: Mapping[str, Any], fixed_clock: frozenset[str] | None = None) -> None:
        self.values: Mapping[str, Any] = values
        self.fixed_clock = (frozenset(k for k in CLOCK_KEYS if k in values) if fixed_clock is None
                            else fixed_clock)


def _unknown_principal(revision: int, principal: str) -> Answer:
    r = Result(Decision.IMPLICIT_DENY, (), (), "unknown_principal", "", {}, "NONE", False, (),
               (f"unknownPrincipal:{principal[:200]}",), frozenset(), NO_CLOCK_EDGES)
    return Answer(r, revision, False, False)


def _unresolved(revision: int, why: Unresolved) -> Answer:
    """An implicit deny for a principal the store knows but will not decide for as asked."""
    r = Result(Decision.IMPLICIT_DENY, (), (), why.reason, "", {}, "NONE", False, (), (why.note,), frozenset(),
               NO_CLOCK_EDGES)
    return Answer(r, revision, False, True, why.until, changes_at=why.until)


def _checked_caller_values(context: Mapping[str, Any], trusted: Mapping[str, Any] | None) -> dict[str, Any]:
    check_context(context)
    return caller_values(context, trusted)




def _resource_account(resource: str, rp: ResolvedPrincipal) -> str:
    """The account that owns `resource` ("*": the principal's own)."""
    if resource == "*":
        return rp.account
    return account_of(resource)


def _fixed_clock(values: Mapping[str, Any], trusted: Mapping[str, Any] | None) -> frozenset[str]:
    """The clock keys in `values` that the untrusted caller gave (not the trusted gateway mapping)."""
    given = frozenset(k for k in CLOCK_KEYS if k in values)
    if given and trusted:
        from_trusted = {k.lower() for k in trusted}
        given = frozenset(k for k in given if k not in from_trusted)
    return given


class Decisions:
    """Authorize and its prepared contexts, over the holder's current snapshot and decision cache."""

    def __init__(self, holder: SnapshotHolder) -> None:
        self._holder = holder
        self._stamp: tuple[int, str, str] = (-1, "", "")   # aws:CurrentTime/EpochTime of the current second
        self._seen: set[int] = set()        # hashes of cache keys seen once while the cache is full

    def prepare_context(self, context: Mapping[str, Any], trusted_context: Mapping[str, Any] | None = None
                        ) -> PreparedContext:
        """The caller's `context` checked and normalised once, for `authorize(..., prepared=...)`.

        Keys the store derives (principal and resource facts) are dropped from it. `trusted_context`
        comes from this process's own gateway mapping and may carry aws:ResourceTag/* for resources
        being created.
        """
        values = _checked_caller_values(context, trusted_context)
        return PreparedContext(values, _fixed_clock(values, trusted_context))

    def authorize(self, principal: str, action: str, resource: str, context: Mapping[str, Any] | None = None, *,
                  explain: bool = False, trusted_context: Mapping[str, Any] | None = None,
                  prepared: PreparedContext | None = None, access_key_id: str = "") -> Answer:
        """Decide one request against the current snapshot.

        The caller's context comes either as `context` (and `trusted_context`; see prepare_context)
        or already prepared. `access_key_id` names the credential the request was signed with, when
        the caller knows it: a role session is resolved through it (see Snapshot.resolve).
        """
        check_target(principal, action, resource)
        if not isinstance(access_key_id, str) or len(access_key_id) > MAX_ACCESS_KEY_ID_CHARS:
            raise RequestError("access_key_id", f"at most {MAX_ACCESS_KEY_ID_CHARS} characters (an access key id)")
        if prepared is None:
            prepared = self.prepare_context(context or {}, trusted_context)
        caller = prepared.values
        snap = self._holder.snapshot
        now = self._holder.clock()
        rp = snap.resolve(principal, now, access_key_id)
        if rp is None:
            return _unknown_principal(snap.revision, principal)
        if isinstance(rp, Unresolved):
            return _unresolved(snap.revision, rp)
        values = self._context(snap, rp, resource, caller, now)
        res_account = _resource_account(resource, rp)
        deps = rp.deps + resource_deps(resource, res_account)
        key = (rp.key, action.lower(), resource)
        result = None if explain else self._holder.cache.get(key, values, snap.revision)
        cached = result is not None
        if result is None:
            result = self._decide(snap, principal, rp, action, resource, res_account, values, explain)
            if not explain and self._admit(key):
                self._holder.cache.put(key, values, result, deps, snap.revision)
        since, until = -math.inf, math.inf
        changes_at = rp.expires
        read = result.keys_read
        fixed = prepared.fixed_clock
        for k in CLOCK_KEYS:
            if k in read and k not in fixed:
                if k not in caller:
                    since, until = float(int(now)), float(int(now) + 1)   # the clock's values hold for this second
                changes_at = min(changes_at, result.clock.next_after(now))
        return Answer(result, snap.revision, cached, True, min(until, rp.expires), since, deps, changes_at,
                      rp.expires)

    def _admit(self, key: Hashable) -> bool:
        """Whether to keep this decision: always while the cache has room, else on the key's second sighting
        (CACHE_DOORKEEPER_KEYS). Only what is kept changes, never an answer."""
        cache = self._holder.cache
        lru = cache._lru                    # one len() per put; the cache is this package's
        if lru is None or len(lru) < cache.capacity:
            return True
        h = hash(key)
        seen = self._seen
        if h in seen:
            return True
        if len(seen) >= CACHE_DOORKEEPER_KEYS:
            self._seen = seen = set()
        seen.add(h)
        return False

    def _context(self, snap: Snapshot, rp: ResolvedPrincipal, resource: str, caller: Mapping[str, Any],
                 now: float) -> dict[str, Any]:
        values = dict(caller)
        if "aws:currenttime" not in values or "aws:epochtime" not in values:
            second = int(now)
            stamp = self._stamp
            if stamp[0] != second:
                stamp = self._stamp = (second, datetime.fromtimestamp(second, tz=timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"), str(second))
            values.setdefault("aws:currenttime", stamp[1])
            values.setdefault("aws:epochtime", stamp[2])
        values.update(rp.context)
        if resource != "*":
            account = account_of(resource)
            if account:
                values["aws:resourceaccount"] = account
                owner = snap.state.accounts.get(account)
                if owner is not None and owner.org_id:
                    values["aws:resourceorgid"] = owner.org_id
                    values["aws:resourceorgpaths"] = owner.org_paths
            res = snap.resource(resource)
            if res is not None:
                for k, v in res.tags:
                    values[f"aws:resourcetag/{k.lower()}"] = v
        return values

    def _decide(self, snap: Snapshot, principal: str, rp: ResolvedPrincipal, action: str, resource: str,
                res_account: str, values: dict[str, Any], explain: bool) -> Result:
        rkey, rpol = snap.resource_policy(resource)
        cps = snap.policy_set(principal, rp, rkey, rpol, res_account,
                              resource_deps(rkey, res_account) if rkey else (account_dep(res_account),))
        return decide(cps, rp.requester, action, resource, res_account, values, explain=explain,
                      options=self._holder.config.options)
