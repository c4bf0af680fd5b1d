"""The decision procedure across policy types (spec 3): explicit deny, RCP, SCP, resource, identity, boundary, session."""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Iterable, Mapping, NamedTuple, Sequence

from .policy.arn import PreparedResource, account_of, service_of
from .policy.conditions import ConditionContext, ContextValue, normalise_context
from .policy.model import Policy, Statement
from .policy.principals import GrantKind, Requester, not_principal_applies, parse_requester, principal_grant


class Decision(str, Enum):
    ALLOW = "Allow"
    EXPLICIT_DENY = "ExplicitDeny"
    IMPLICIT_DENY = "ImplicitDeny"


# Statement groups. SCP and RCP levels get their own group each: every level must allow.
IDENTITY, RESOURCE, BOUNDARY, SESSION = 0, 1, 2, 3
SCP_BASE, RCP_BASE = 100, 200
_MAX_LEVELS = 99


def group_type(group: int) -> str:
    if group == IDENTITY:
        return "identity"
    if group == RESOURCE:
        return "resource"
    if group == BOUNDARY:
        return "boundary"
    if group == SESSION:
        return "session"
    return "scp" if group < RCP_BASE else "rcp"


@dataclass(frozen=True)
class EngineOptions:
    """Choices the spec marks [UNC]; the defaults are the spec's (and the conformance cases')."""

    not_principal_strict: bool = True                      # spec 2.7
    org_failure_label: str = "ImplicitDeny"                 # SCP/RCP level without Allow (spec 3.3)
    session_policy_caps_session_arn_grants: bool = False    # E17: docs say not capped
    rcp_services: frozenset[str] = frozenset({             # services whose resources RCPs govern (spec 3.2)
        "kinesisvideo", "s3", "sts", "sqs", "kms", "secretsmanager", "dynamodb", "ecr", "logs", "cognito-identity"})


DEFAULT_OPTIONS = EngineOptions()


@dataclass(frozen=True)
class Request:
    """One authorization question. `context` is complete: the engine adds no keys of its own."""

    principal: str
    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)
    resource_account: str | None = None   # None: the resource ARN's account ("*": the principal's)
    federated_creator: str = ""           # IAM user that created a federated-user session, when known


@dataclass(frozen=True, slots=True)
class MatchedStatement:
    policy_type: str
    policy_name: str
    sid: str
    index: int
    effect: str

    def as_dict(self) -> dict[str, Any]:
        return {"policyType": self.policy_type, "policyName": self.policy_name, "sid": self.sid,
                "index": self.index, "effect": self.effect}


class Result(NamedTuple):
    """A decision and its reasons. A NamedTuple: cheap to build on the hot path, and immutable."""

    decision: Decision
    deciding: tuple[MatchedStatement, ...]      # the statements that decided (denies, or the granting allows)
    matched: tuple[MatchedStatement, ...]       # every statement that matched (complete only with explain)
    decided_by: str                             # explicit_deny, rcp, scp, resource_policy, identity, boundary,
                                                # session_policy, root, anonymous, no_allow
    blocked_by: str                             # policy type that blocked an otherwise allowed request, or ""
    per_type: Mapping[str, str]
    grant_kind: str                             # resource-policy grant kind (spec 2.7)
    same_account: bool
    missing_keys: tuple[str, ...]
    notes: tuple[str, ...]
    keys_read: frozenset[str]                   # context keys consulted: the decision depends on no other
    clock: "ClockEdges"                         # when the clock alone could change it (see ClockEdges)

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW


CLOCK_KEYS: Final = ("aws:currenttime", "aws:epochtime")   # the context keys that carry the clock


@dataclass(frozen=True, slots=True)
class ClockEdges:
    """The instants at which a policy set's decisions could change by the clock alone.

    The clock reaches policies as aws:CurrentTime and aws:EpochTime, both whole seconds. A Date or
    Numeric comparison of either with a literal threshold T can change its outcome only when the
    clock's second reaches floor(T) or floor(T) + 1, so those instants, over every such condition in
    the set, are all the places where a decision that read the clock can change (a decision that did
    not read it never changes by the clock). `every_second` marks a set that reads the clock in a way
    whose edges cannot be listed (a string operator on aws:CurrentTime, the clock in a policy variable,
    a threshold given by a variable): its decisions may change at any second.
    """

    instants: tuple[float, ...] = ()     # sorted epoch seconds
    every_second: bool = False

    def next_after(self, now: float) -> float:
        """The first instant after `now` at which the clock could change a decision (inf: never)."""
        if self.every_second:
            return float(int(now) + 1)
        i = bisect_right(self.instants, now)
        return self.instants[i] if i < len(self.instants) else math.inf

    @staticmethod
    def of(statements: Iterable[Statement]) -> "ClockEdges":
        edges: set[float] = set()
        every = False
        for st in statements:
            for c in st.conditions:
                if c.key in CLOCK_KEYS and c.family != "null":
                    if c.family not in ("date", "numeric") or c.dynamic:
                        every = True
                    else:
                        for p in c.pvals:
                            if p is not None:
                                t = math.floor(p)
                                edges.update((float(t), float(t + 1)))
                if c.dynamic and any(v.lower() in CLOCK_KEYS for v in c.variable_names()):
                    every = True
            for r in st.resources or ():
                if r.variable_names and any(v.lower() in CLOCK_KEYS for v in r.variable_names):
                    every = True
        if not edges and not every:
            return NO_CLOCK_EDGES
        return ClockEdges(tuple(sorted(edges)), every)


NO_CLOCK_EDGES: Final = ClockEdges()


@dataclass(frozen=True)
class PolicySet:
    """Every policy that applies to one request, by type."""

    identity: tuple[Policy, ...] = ()
    resource: Policy | None = None
    boundary: Policy | None = None
    session: tuple[Policy, ...] | None = None          # None: no session policy was passed
    scp_levels: tuple[tuple[Policy, ...], ...] | None = None   # None: not in an organization
    rcp_levels: tuple[tuple[Policy, ...], ...] | None = None   # customer RCPs; RCPFullAWSAccess is implicit

    def groups(self) -> Iterable[tuple[int, Policy]]:
        for p in self.identity:
            yield IDENTITY, p
        if self.resource is not None:
            yield RESOURCE, self.resource
        if self.boundary is not None:
            yield BOUNDARY, self.boundary
        for p in self.session or ():
            yield SESSION, p
        for lvl, level in enumerate((self.scp_levels or ())[:_MAX_LEVELS]):
            for p in level:
                yield SCP_BASE + lvl, p
        for lvl, level in enumerate((self.rcp_levels or ())[:_MAX_LEVELS]):
            for p in level:
                yield RCP_BASE + lvl, p


# The fast form of the usual identity statement (static resources, no NotResource, no Principal, nothing
# unevaluable): (resource regexes, conditions), so the hot loop reads two locals instead of five attributes.
_Fast = tuple[tuple[Any, ...], tuple[Any, ...]]
_CANDIDATE_MEMO_MAX = 512


# One statement in the index: (seq, group, statement, matched, fast), where
#   seq        its position among every statement of the set (candidates keep this order),
#   group      IDENTITY, RESOURCE, BOUNDARY, SESSION, SCP_BASE + level or RCP_BASE + level,
#   statement  the compiled statement,
#   matched    how a Result names it,
#   fast       its fast form, or None.
# A plain tuple on purpose: the decision loops unpack it (`for _seq, group, st, m, fast in ...`), and CPython
# unpacks an exact tuple in a third of the time it takes for a NamedTuple (a tuple subclass: about 11 ns
# against 36 ns an entry on 3.11). Code that reads one field by itself names its position.
_Entry = tuple[int, int, Statement, MatchedStatement, "_Fast | None"]
_SEQ: Final = 0
_STATEMENT: Final = 2


class StatementIndex:
    """Statements by action: literal actions in a dict, wildcard patterns in a list, NotAction always checked.

    The candidates for one action are computed once and remembered (bounded), so a decision
    touches only the statements whose Action can match.
    """

    __slots__ = ("literal", "patterned", "memo", "size")

    def __init__(self, entries: Sequence[tuple[int, Statement]]) -> None:
        self.literal: dict[str, list[_Entry]] = {}
        self.patterned: list[_Entry] = []
        self.memo: dict[str, tuple[tuple[_Entry, ...], tuple[_Entry, ...]]] = {}
        self.size = 0
        for seq, (group, st) in enumerate(entries):
            if not st.effect_valid:
                continue
            self.size += 1
            fast = ((st.res_fast, st.conditions) if st.res_fast is not None and not st.not_resource
                    and st.principals is None and not st.broken else None)
            entry: _Entry = (seq, group, st, MatchedStatement(group_type(group), st.policy_name, st.sid, st.index,
                                                              st.effect), fast)
            if not st.not_action and st.actions and all(a.literal is not None for a in st.actions):
                for key in dict.fromkeys(a.literal for a in st.actions):
                    if key is not None:
                        self.literal.setdefault(key, []).append(entry)
            else:
                self.patterned.append(entry)

    def candidates(self, action_lower: str) -> tuple[tuple[_Entry, ...], tuple[_Entry, ...]]:
        """(deny statements, allow statements) whose Action/NotAction matches, in document order."""
        hit = self.memo.get(action_lower)
        if hit is not None:
            return hit
        found = list(self.literal.get(action_lower, ()))
        found.extend(e for e in self.patterned if e[_STATEMENT].matches_action(action_lower))
        found.sort(key=lambda e: e[_SEQ])
        result = (tuple(e for e in found if not e[_STATEMENT].allow), tuple(e for e in found if e[_STATEMENT].allow))
        if len(self.memo) < _CANDIDATE_MEMO_MAX:
            self.memo[action_lower] = result
        return result

    def full_scan(self, action_lower: str) -> tuple[tuple[_Entry, ...], tuple[_Entry, ...]]:
        """The same answer as candidates(), by checking every statement (the index's reference)."""
        every = sorted([*(e for lst in self.literal.values() for e in lst), *self.patterned], key=lambda e: e[_SEQ])
        uniq = list({e[_SEQ]: e for e in every}.values())
        found = [e for e in uniq if e[_STATEMENT].matches_action(action_lower)]
        return (tuple(e for e in found if not e[_STATEMENT].allow), tuple(e for e in found if e[_STATEMENT].allow))


class CompiledPolicySet:
    """A PolicySet with its statement index, built once and reused for many requests."""

    __slots__ = ("policies", "index", "scp_level_count", "rcp_level_count", "has_boundary", "has_session",
                 "session_count", "has_resource", "identity_only", "clock")

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        entries = [(g, st) for g, p in policies.groups() for st in p.statements]
        self.index = StatementIndex(entries)
        self.clock = ClockEdges.of(st for _g, st in entries)
        self.scp_level_count = None if policies.scp_levels is None else min(len(policies.scp_levels), _MAX_LEVELS)
        self.rcp_level_count = None if policies.rcp_levels is None else min(len(policies.rcp_levels), _MAX_LEVELS)
        self.has_boundary = policies.boundary is not None
        self.has_session = policies.session is not None
        self.session_count = len(policies.session or ())
        self.has_resource = policies.resource is not None
        self.identity_only = (not self.has_resource and not self.has_boundary and not self.has_session
                              and self.scp_level_count is None and self.rcp_level_count is None)


def evaluate(request: Request, policies: PolicySet | CompiledPolicySet, *, explain: bool = False,
             options: EngineOptions = DEFAULT_OPTIONS) -> Result:
    """Decide one request against the policies that apply to it (spec 3.7)."""
    cps = policies if isinstance(policies, CompiledPolicySet) else CompiledPolicySet(policies)
    values = normalise_context(request.context)
    uid = values.get("aws:userid")
    requester = parse_requester(request.principal, uid if isinstance(uid, str) else None, request.federated_creator)
    return decide(cps, requester, request.action, request.resource, request.resource_account, values,
                  explain=explain, options=options)


def decide(cps: CompiledPolicySet, requester: Requester, action: str, resource: str, resource_account: str | None,
           values: dict[str, ContextValue], *, explain: bool = False,
           options: EngineOptions = DEFAULT_OPTIONS) -> Result:
    """`evaluate` for callers that have already prepared the requester and the normalised context."""
    return _decide(action, resource, resource_account, cps, ConditionContext(values), requester, explain, options)


def _statement_applies(st: Statement, resource: PreparedResource, ctx: ConditionContext, r: Requester,
                       cps: CompiledPolicySet, options: EngineOptions) -> GrantKind:
    """NONE when the statement does not apply; otherwise how it names the requester."""
    if not st.res_any:
        hit = False
        fast = st.res_fast
        if fast is not None:
            raw = resource.raw
            for rx in fast:
                if rx.fullmatch(raw) is not None:
                    hit = True
                    break
        else:
            for pat in st.resources:  # type: ignore[union-attr]
                g = pat.static
                if g is not None and g.regex is not None:
                    matched = g.regex.fullmatch(resource.raw) is not None
                elif pat.any or g is not None:
                    matched = pat.matches(resource, ctx.lookup)
                else:
                    # A pattern with variables: the same text often stands in several policies; render
                    # and match it once per request.
                    seen = ctx.patterns
                    known = seen.get(pat.source)
                    if known is None:
                        known = seen[pat.source] = pat.matches(resource, ctx.lookup)
                    matched = known
                if matched:
                    hit = True
                    break
        if hit is st.not_resource:
            return _NONE
    kind = _EXACT
    if st.principals is not None:
        if st.not_principal:
            # Deny + NotPrincipal always hits a user or role that has a boundary (spec 2.7), and so the
            # sessions the boundary applies to.
            forced = not st.allow and cps.has_boundary and r.kind in _BOUNDED_KINDS
            if not forced and not not_principal_applies(st.principals, r, strict=options.not_principal_strict):
                return _NONE
            kind = GrantKind.ACCOUNT
        else:
            kind = principal_grant(st.principals, r)
            if kind is _NONE:
                return _NONE
    if st.broken:
        # Part of the condition cannot be understood: never grant, but a Deny still denies.
        ctx.note(f"unevaluableStatement:{st.policy_name}#{st.index}")
        return _NONE if st.allow else kind
    for clause in st.conditions:
        if not clause.evaluate(ctx):
            return _NONE
    return kind


_NONE, _EXACT = GrantKind.NONE, GrantKind.EXACT
# Requesters in no account of the organization: SCPs do not apply to them (spec 3.2).
_OUTSIDE_SCPS = ("anonymous", "service")
# Requesters a permissions boundary can be attached to: a user, a role (asked as its ARN), a role
# session, and a federated-user session (its creating user's boundary applies to it, spec 3.4).
_BOUNDED_KINDS = ("user", "role", "assumed-role", "federated-user")


def _decide(req_action: str, req_resource: str, res_account: str | None, cps: CompiledPolicySet,
            ctx: ConditionContext, r: Requester, explain: bool, options: EngineOptions) -> Result:
    action = req_action.lower()
    resource = PreparedResource(req_resource)
    denies, allows = cps.index.candidates(action)

    if cps.identity_only and not explain and r.kind in ("user", "assumed-role"):
        if res_account is None:
            res_account = account_of(req_resource) if req_resource != "*" else r.account
        if r.account == res_account and not (action.startswith("sts:") and ":role/" in req_resource):
            return _identity_only(denies, allows, resource, ctx, r, cps, options)

    matched: list[MatchedStatement] = []
    deny_hits: list[MatchedStatement] = []
    # RCPs govern only resources of the services that support them, whoever asks (anonymous callers
    # included); SCPs govern only principals of the organization's accounts (spec 3.2): their Deny
    # statements count in the explicit-deny sweep exactly when their levels are checked below.
    rcp_applies = cps.rcp_level_count is not None and service_of(req_resource) in options.rcp_services
    scp_applies = cps.scp_level_count is not None and r.kind not in _OUTSIDE_SCPS
    for _seq, group, st, m, _f in denies:
        if group >= RCP_BASE:
            if not rcp_applies:
                continue
        elif group >= SCP_BASE and not scp_applies:
            continue
        if _statement_applies(st, resource, ctx, r, cps, options) is not _NONE:
            deny_hits.append(m)
            matched.append(m)
            if not explain:
                break

    if res_account is None:
        res_account = account_of(req_resource) if req_resource != "*" else r.account
    same_account = bool(r.account) and r.kind != "anonymous" and r.account == res_account

    # Allow statements: per group, whether any matches; for the resource policy the strongest kind.
    # Only WILDCARD ends the resource scan early: the anonymous and session-cap rules below tell it
    # from EXACT, so stopping at EXACT made the answer depend on statement order (and on explain).
    allowed_groups: dict[int, list[MatchedStatement]] = {}
    best_kind = _NONE
    if not deny_hits or explain:
        for _seq, group, st, m, _f in allows:
            if not explain and group in allowed_groups and (group != RESOURCE or best_kind is GrantKind.WILDCARD):
                continue
            kind = _statement_applies(st, resource, ctx, r, cps, options)
            if kind is _NONE:
                continue
            matched.append(m)
            if group in allowed_groups:
                allowed_groups[group].append(m)
            else:
                allowed_groups[group] = [m]
            if group == RESOURCE and kind > best_kind:
                best_kind = kind

    notes = ctx.notes
    per_type = _EMPTY
    if explain:
        per_type = _per_type(cps, allowed_groups, deny_hits, scp_applies)
        # Like the IAM simulator's MissingContextValues: every key that a statement applying to
        # this action references, absent from the request (SCP and RCP keys are not reported).
        absent = [key for _seq, group, st, _m, _f in (*denies, *allows) if group < SCP_BASE
                  for key in st.condition_keys() if key.lower() not in ctx.values]
        ctx.missing_keys[:0] = absent     # first, so the reported spelling is the policy's
    base = _ResultParts(matched, per_type, best_kind.label, same_account, ctx, cps.clock)
    if deny_hits:
        return base.make(Decision.EXPLICIT_DENY, "explicit_deny", deny_hits)

    # RCPs (spec 3.3 step 2). RCPFullAWSAccess sits implicitly at every level, so a level can
    # only fail through a Deny (already handled); nothing more to check for the outcome.

    if scp_applies:
        for lvl in range(cps.scp_level_count or 0):
            if SCP_BASE + lvl not in allowed_groups:
                notes.append(f"scpLevelWithoutAllow:{lvl}")
                return base.make(Decision(options.org_failure_label), "scp", (), "scp")

    ident = allowed_groups.get(IDENTITY, ())
    res_allows = allowed_groups.get(RESOURCE, ())
    trust_required = action.startswith("sts:") and ":role/" in req_resource

    if r.kind == "anonymous":
        if best_kind is GrantKind.WILDCARD:
            return base.make(Decision.ALLOW, "anonymous", res_allows)
        return base.make(Decision.IMPLICIT_DENY, "no_allow", ())

    boundary_ok = not cps.has_boundary or BOUNDARY in allowed_groups
    if r.is_session:
        if cps.has_session:
            session_ok = SESSION in allowed_groups
        else:
            session_ok = r.kind == "assumed-role"   # GetFederationToken sessions need a session policy
    else:
        session_ok = True

    if not same_account:
        identity_ok = r.kind == "root" or bool(ident)
        if not identity_ok:
            return base.make(Decision.IMPLICIT_DENY, "no_allow", (), "identity")
        if not boundary_ok:
            return base.make(Decision.IMPLICIT_DENY, "boundary", (), "boundary")
        if not session_ok:
            return base.make(Decision.IMPLICIT_DENY, "session_policy", (), "session")
        if best_kind is _NONE:
            return base.make(Decision.IMPLICIT_DENY, "resource_policy", (), "resource")
        return base.make(Decision.ALLOW, "identity", [*ident, *res_allows])

    if r.kind == "root" and not trust_required:
        return base.make(Decision.ALLOW, "root", ())
    if trust_required and best_kind is _NONE:
        return base.make(Decision.IMPLICIT_DENY, "resource_policy", (), "resource")

    if best_kind >= _EXACT:
        if (options.session_policy_caps_session_arn_grants and best_kind is _EXACT and r.is_session
                and cps.has_session and SESSION not in allowed_groups):
            return base.make(Decision.IMPLICIT_DENY, "session_policy", (), "session")
        if r.is_session and cps.has_session and SESSION not in allowed_groups:
            notes.append("sessionArnGrantNotCapped")
        return base.make(Decision.ALLOW, "resource_policy", res_allows)

    granted_by_resource = best_kind is GrantKind.ENTITY
    if not (granted_by_resource or ident):
        return base.make(Decision.IMPLICIT_DENY, "no_allow", ())
    if not boundary_ok:
        return base.make(Decision.IMPLICIT_DENY, "boundary", (), "boundary")
    if not session_ok:
        return base.make(Decision.IMPLICIT_DENY, "session_policy", (), "session")
    if granted_by_resource and not ident:
        return base.make(Decision.ALLOW, "resource_policy", res_allows)
    if res_allows:
        return base.make(Decision.ALLOW, "identity", [*ident, *res_allows])
    return base.make(Decision.ALLOW, "identity", ident)


_EMPTY: dict[str, str] = {}
# Result(...) runs NamedTuple's Python-level __new__; building the tuple directly is about 3x cheaper.
_new_result = tuple.__new__


def _dedupe_keys(keys: list[str]) -> tuple[str, ...]:
    """Key names are case-insensitive: keep the first spelling of each."""
    seen: dict[str, str] = {}
    for k in keys:
        seen.setdefault(k.lower(), k)
    return tuple(seen.values())


def _identity_only(denies: Sequence[_Entry], allows: Sequence[_Entry], resource: PreparedResource,
                   ctx: ConditionContext, r: Requester, cps: CompiledPolicySet, options: EngineOptions) -> Result:
    """The common case, same answers as the general path: a user or role session in its own
    account with identity policies only (no resource policy, boundary, session policy, SCP, RCP)."""
    decision, decided_by = Decision.IMPLICIT_DENY, "no_allow"
    deciding: tuple[MatchedStatement, ...] = ()
    for _seq, _group, st, m, _f in denies:
        if _statement_applies(st, resource, ctx, r, cps, options) is not _NONE:
            decision, decided_by, deciding = Decision.EXPLICIT_DENY, "explicit_deny", (m,)
            break
    else:
        raw = resource.raw
        for _seq, _group, st, m, fast in allows:
            if fast is not None:
                # Inline form of _statement_applies for the usual identity statement.
                regexes, conditions = fast
                for rx in regexes:
                    if rx.fullmatch(raw) is not None:
                        break
                else:
                    continue
                for clause in conditions:
                    if not clause.evaluate(ctx):
                        break
                else:
                    decision, decided_by, deciding = Decision.ALLOW, "identity", (m,)
                    break
            elif _statement_applies(st, resource, ctx, r, cps, options) is not _NONE:
                decision, decided_by, deciding = Decision.ALLOW, "identity", (m,)
                break
    missing = _dedupe_keys(ctx.missing_keys) if ctx.missing_keys else ()
    return _new_result(Result, (decision, deciding, deciding, decided_by, "", _EMPTY, "NONE", True, missing,
                                tuple(ctx.notes), frozenset(ctx.read), cps.clock))


class _ResultParts:
    """What every Result of one decision shares; `make` adds the decision and the statements that decided."""

    __slots__ = ("matched", "per_type", "kind", "same_account", "ctx", "clock")

    def __init__(self, matched: list[MatchedStatement], per_type: dict[str, str], kind: str, same_account: bool,
                 ctx: ConditionContext, clock: ClockEdges) -> None:
        self.matched = matched
        self.per_type = per_type
        self.kind = kind
        self.same_account = same_account
        self.ctx = ctx
        self.clock = clock

    def make(self, decision: Decision, decided_by: str, deciding: Sequence[MatchedStatement],
             blocked_by: str = "") -> Result:
        ctx = self.ctx
        missing = _dedupe_keys(ctx.missing_keys) if ctx.missing_keys else ()
        return _new_result(Result, (decision, tuple(deciding), tuple(self.matched), decided_by, blocked_by,
                                    self.per_type, self.kind, self.same_account, missing, tuple(ctx.notes),
                                    frozenset(ctx.read), self.clock))


def _per_type(cps: CompiledPolicySet, allowed: dict[int, list[MatchedStatement]],
              denies: list[MatchedStatement], scp_applies: bool) -> dict[str, str]:
    denied_types = {m.policy_type for m in denies}
    out: dict[str, str] = {}
    p = cps.policies
    present = {
        "identity": bool(p.identity), "resource": p.resource is not None, "boundary": p.boundary is not None,
        "session": p.session is not None, "scp": scp_applies, "rcp": p.rcp_levels is not None,
    }
    allowed_types = {group_type(g) for g in allowed}
    for t, here in present.items():
        if not here:
            out[t] = "notApplicable"
        elif t in denied_types:
            out[t] = "explicitDeny"
        elif t == "scp":
            n = cps.scp_level_count or 0
            out[t] = "allowed" if all(SCP_BASE + i in allowed for i in range(n)) else "implicitDeny"
        elif t == "rcp":
            out[t] = "allowed"
        else:
            out[t] = "allowed" if t in allowed_types else "implicitDeny"
    return out
