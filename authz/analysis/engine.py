"""Access analysis entry points: bundle loading, the Analyzer and its who-can, access-of and diff queries.

Every answer is a decision of the real engine (evaluate.decide) on the store's own policy sets
(Snapshot.policy_set), in the two condition variants of variants.py. Principals are the state's users,
one session per role (no session policy, no session tags: what a caller gets from AssumeRole without
them), the account roots and the anonymous caller. Users and roles are grouped by the records their
policies come from (inline policies, attached policies, groups, boundary, account), and one member
decides for its group; a group is split when its policies read a key that differs between members
(aws:username, aws:userid, aws:PrincipalArn, aws:PrincipalTag/*) and when the resource's policy names
principals (members it names individually decide for themselves).
"""

from __future__ import annotations

import dataclasses
import gc
import json
from contextlib import contextmanager
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

from ..evaluate import (DEFAULT_OPTIONS, CompiledPolicySet, Decision, EngineOptions, MatchedStatement, PolicySet,
                        Result, decide)
from ..policy.arn import account_of, split_arn
from ..policy.glob import Token
from ..policy.model import Policy, Statement
from ..policy.principals import GrantKind, parse_requester
from ..policy.variables import render_tokens, static_tokens
from ..store.bundle import load_bundle
from ..store.holder import CompileHook
from ..store.changes import account_dep
from ..store.ops import CreateSession
from ..store.snapshot import PolicyCompiler, ResolvedPrincipal, Snapshot, resource_deps
from ..store.state import IamState, Principal, compiling
from .classes import KINESISVIDEO_UNIVERSE, pattern_text, pattern_tokens, witnesses
from .model import Access, Grant, Reach, Status, WhoCan
from .principals import (ANALYSIS_SESSION, Entry, Groups, Member, Relevance, Splitter, entries,
                         group_by_relevance, role_member, session_key, user_member)
from .variants import RESOURCE_TAG, Variants, fixed_key, principal_specific, statement_keys

_DATA = Path(__file__).resolve().parent.parent / "policy" / "data" / "actions.json"
ASSUME_ROLE = "sts:AssumeRole"
MAX_CHAIN = 5                             # roles assumed one after another, at most
_SESSION_SECONDS = 10 * 365 * 86400
_ACCOUNT_NUMBER = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")
_KIND_ORDER = {"user": 0, "role": 1, "root": 2, "anonymous": 3}


@lru_cache(maxsize=1)
def _actions() -> tuple[str, ...]:
    services = json.loads(_DATA.read_text())["services"]
    names = [f"kinesisvideo:{a}" for a in services["kinesisvideo"]["actions"]]
    return tuple(sorted(names)) + (ASSUME_ROLE,)


ACTIONS: tuple[str, ...] = _actions()
KINESISVIDEO_ACTIONS: tuple[str, ...] = ACTIONS[:-1]


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused for one question: a question allocates many short-lived acyclic
    objects, and each full collection they trigger would walk the whole loaded state (hundreds of MB at
    100,000 users) for nothing; the sidecar keeps its loaded state out of the collector's way likewise."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def snapshot_of(state: IamState) -> Snapshot:
    """A snapshot of `state` with its own compiled-policy cache (revision 0)."""
    return Snapshot(state, 0, PolicyCompiler())


def load(directory: Path) -> Snapshot:
    """Load a bundle directory as the sidecar does (store/bundle.py), compiling each policy from its validated
    parse as the sidecar's load does (holder.CompileHook); raises BundleError naming the fault."""
    compiler = PolicyCompiler()
    with compiling(CompileHook(compiler)):
        state = load_bundle(Path(directory))
    return Snapshot(state, 0, compiler)


def canonical_action(action: str) -> str:
    """The action as the tables spell it (action names are case-insensitive); unknown ones as given."""
    low = action.lower()
    return next((a for a in ACTIONS if a.lower() == low), action)


@dataclass
class Group:
    """Principals whose policies come from the same records; `members[0]` decides for the rest."""

    kind: str                   # user | role
    account: str
    members: list[Member] = field(default_factory=list)
    specific: bool | None = None    # whether its policies read a key that differs between members


@dataclass(frozen=True)
class Outcome:
    """One (principal, action, resource) through both condition variants."""

    status: Status
    deciding: tuple[MatchedStatement, ...] = ()     # the allowing statements (or the denying ones for NO)
    conditions: tuple[str, ...] = ()
    denied_by: tuple[MatchedStatement, ...] = ()    # explicit denies that hit under the permissive variant
    statements: dict[tuple[str, int], Statement] = field(default_factory=dict, compare=False)


_NO = Outcome(Status.NO)
# who-can without roles assumed, for one principal: (outcome, kind, its own deciding statements)
Direct = tuple[Outcome, str, tuple[MatchedStatement, ...]]


def _with_sessions(state: IamState, now: float) -> IamState:
    """`state` with one session of every role (named ANALYSIS_SESSION, no policy, no tags)."""
    for acct in state.accounts.values():
        for role in acct.roles.values():
            partition = role.arn.split(":", 2)[1]
            issued = max(now - 1, role.revoked_before)
            op = CreateSession(arn=f"arn:{partition}:sts::{role.account}:assumed-role/{role.name}/{ANALYSIS_SESSION}",
                               role_arn=role.arn, role_id=role.unique_id, session_name=ANALYSIS_SESSION,
                               issued=issued, expires=issued + _SESSION_SECONDS, policy=None, tags=None,
                               access_key_id=session_key(role.arn), secret="0" * 40,
                               session_token_sha256="00" * 32, source="")
            state = op.apply(state)
    return state


def group_key(kind: str, p: Principal) -> tuple[Any, ...]:
    """The records a principal's policies come from (two principals with one key have the same policies)."""
    return (kind, p.account, p.inline, p.attached, p.groups, p.boundary)


def _describe_resources(st: Statement) -> tuple[str, ...]:
    if st.resources is None:
        return ()
    texts = tuple(r.source for r in st.resources)
    return tuple(f"NotResource {t}" for t in texts) if st.not_resource else texts


class Analyzer:
    """Analysis of one snapshot, remembering principal groups and per-group answers between queries."""

    def __init__(self, snapshot: Snapshot, options: EngineOptions = DEFAULT_OPTIONS,
                 clock: Callable[[], float] = time.time) -> None:
        self.base = snapshot
        self.options = options
        self.now = clock()
        self.snapshot = Snapshot(_with_sessions(snapshot.state, self.now), snapshot.revision, snapshot.compiler)
        self.variants = Variants()
        self._groups: list[Group] | None = None
        self._by_key: dict[tuple[Any, ...], Group] = {}
        self._resolved: dict[str, ResolvedPrincipal | None] = {}
        self.relevance = Relevance(self.snapshot.state, self.snapshot.compiler)
        self._entries: list[Entry] | None = None
        self._relevant_sets: dict[tuple[Any, ...], CompiledPolicySet] = {}
        self._statement_maps: dict[CompiledPolicySet, dict[tuple[str, int], Statement]] = {}
        self._direct_memo: dict[tuple[str, str], dict[str, Direct]] = {}
        self._matched_memo: dict[Statement, MatchedStatement] = {}

    # ------------------------------------------------------------ principals

    def groups(self) -> list[Group]:
        if self._groups is None:
            by_key: dict[tuple[Any, ...], Group] = {}
            for acct in self.snapshot.state.accounts.values():
                for u in acct.users.values():
                    key = group_key("user", u)
                    g = by_key.get(key)
                    if g is None:
                        g = by_key[key] = Group("user", acct.id)
                    g.members.append(user_member(u))
                for r in acct.roles.values():
                    key = group_key("role", r)
                    g = by_key.get(key)
                    if g is None:
                        g = by_key[key] = Group("role", acct.id)
                    g.members.append(role_member(r))
            self._by_key = by_key
            self._groups = list(by_key.values())
        return self._groups

    def resolve(self, m: Member | str) -> ResolvedPrincipal | None:
        principal, key = (m, "") if isinstance(m, str) else (m.principal, m.access_key)
        if principal in self._resolved:
            return self._resolved[principal]
        hit = self.snapshot.resolve(principal, self.now, key)
        rp = hit if isinstance(hit, ResolvedPrincipal) else None
        self._resolved[principal] = rp
        return rp

    def _org_policies(self, account: str) -> list[Policy]:
        out: list[Policy] = []
        for kind in ("scp", "rcp"):
            for level in self.snapshot.org_levels(account, kind) or ():
                out.extend(level)
        return out

    def _specific(self, g: Group) -> bool:
        """Whether the group's policies read a key whose value differs between its members."""
        if g.specific is None:
            rp = self.resolve(g.members[0])
            g.specific = rp is None or self.specific_policies(rp)
        return g.specific

    def specific_policies(self, rp: ResolvedPrincipal) -> bool:
        """Whether the principal's policies read a key whose value differs between principals that have
        the same policies (aws:username, aws:userid, aws:PrincipalArn, aws:PrincipalTag/*)."""
        policies = [*rp.identity, *([rp.boundary] if rp.boundary else []), *self._org_policies(rp.account)]
        return any(principal_specific(k) for p in policies for st in p.statements for k in statement_keys(st))

    def member_of(self, principal: str) -> tuple[str, Member | str] | None:
        """(kind, what to resolve) for a principal ARN: a user, a role (its session), a role session
        (its role's analysis session), an account root or `anonymous`/`*`."""
        if principal in ("*", "anonymous"):
            return "anonymous", "anonymous"
        f = split_arn(principal)
        if f is None:
            return None
        state = self.snapshot.state
        acct = state.accounts.get(f[4])
        if acct is None:
            return None
        res = f[5]
        if f[2] == "iam" and res == "root":
            return "root", principal
        name = res.rsplit("/", 1)[-1].lower()
        if f[2] == "iam" and res.startswith("user/"):
            u = acct.users.get(name)
            return ("user", user_member(u)) if u is not None and u.arn == principal else None
        if f[2] == "iam" and res.startswith("role/"):
            r = acct.roles.get(name)
            return ("role", role_member(r)) if r is not None and r.arn == principal else None
        if f[2] == "sts" and res.startswith("assumed-role/"):
            bits = res.split("/")
            r = acct.roles.get(bits[1].lower()) if len(bits) >= 3 else None
            return ("role", role_member(r)) if r is not None else None
        return None

    # ------------------------------------------------------------ one decision

    def _values(self, rp: ResolvedPrincipal, resource: str) -> dict[str, Any]:
        """The context the store derives for this principal and resource (Decisions._context without the
        caller's keys and the clock, which the condition variants treat as unknown)."""
        values: dict[str, Any] = dict(rp.context)
        if resource != "*":
            account = account_of(resource)
            if account:
                values["aws:resourceaccount"] = account
                owner = self.snapshot.state.accounts.get(account)
                if owner is not None and owner.org_id:
                    values["aws:resourceorgid"] = owner.org_id
                    values["aws:resourceorgpaths"] = owner.org_paths
            res = self.snapshot.resource(resource)
            if res is not None:
                for k, v in res.tags:
                    values[f"aws:resourcetag/{k.lower()}"] = v
        return values

    def policy_set(self, rp: ResolvedPrincipal, resource: str) -> tuple[CompiledPolicySet, str]:
        snap = self.snapshot
        res_account = rp.account if resource == "*" else account_of(resource)
        rkey, rpol = snap.resource_policy(resource)
        deps = resource_deps(rkey, res_account) if rkey else (account_dep(res_account),)
        return snap.policy_set(rp.requester.arn, rp, rkey, rpol, res_account, deps), res_account

    def relevant_set(self, rp: ResolvedPrincipal, identity: tuple[Policy, ...], resource: str
                     ) -> tuple[CompiledPolicySet, str]:
        """The policy set of `rp` on `resource` (as Snapshot.policy_set builds it) with only `identity` among its
        identity policies: the others have no statement that can apply to the question, so the engine's
        decision is the same. Remembered by the policies it holds, so a group's members share it."""
        snap = self.snapshot
        res_account = rp.account if resource == "*" else account_of(resource)
        _rkey, rpol = snap.resource_policy(resource)
        scp = None if rp.requester.kind == "anonymous" else snap.org_levels(rp.account, "scp")
        rcp = snap.org_levels(res_account, "rcp")
        key = (identity, rpol, rp.boundary, rp.session, scp, rcp)
        hit = self._relevant_sets.get(key)
        if hit is None:
            if len(self._relevant_sets) > 50_000:
                self._relevant_sets.clear()
            hit = self._relevant_sets[key] = CompiledPolicySet(PolicySet(
                identity=identity, resource=rpol, boundary=rp.boundary, session=rp.session, scp_levels=scp,
                rcp_levels=rcp))
        return hit, res_account

    def evaluate(self, rp: ResolvedPrincipal, action: str, resource: str,
                 identity: tuple[Policy, ...] | None = None) -> Outcome:
        """Whether `rp` can be allowed `action` on `resource`: NO, CONDITIONAL or YES (variants.py).
        `identity`: only these of its identity policies can apply (see relevant_set)."""
        cps, res_account = (self.policy_set(rp, resource) if identity is None
                            else self.relevant_set(rp, identity, resource))
        session = rp.requester.kind == "assumed-role"
        permissive, strict = self.variants.sets(cps, session)
        values = self._values(rp, resource)
        r1 = decide(permissive, rp.requester, action, resource, res_account, dict(values), explain=True,
                    options=self.options)
        if not r1.allowed:
            if r1.decision is not Decision.EXPLICIT_DENY:
                return _NO
            return Outcome(Status.NO, r1.deciding, (), r1.deciding, self._statements(cps))
        r2 = decide(strict, rp.requester, action, resource, res_account, dict(values), explain=True,
                    options=self.options)
        statements = self._statements(cps)
        if r2.allowed:
            return Outcome(Status.YES, r2.deciding, (), (), statements)
        return Outcome(Status.CONDITIONAL, r1.deciding, self._conditions(cps, session, r1, r2), (), statements)

    def _statements(self, cps: CompiledPolicySet) -> dict[tuple[str, int], Statement]:
        """The statements of a policy set by (policy name, index): how a MatchedStatement names them."""
        hit = self._statement_maps.get(cps)
        if hit is None:
            if len(self._statement_maps) > 4096:
                self._statement_maps.clear()
            hit = self._statement_maps[cps] = {(st.policy_name, st.index): st for _g, p in cps.policies.groups()
                                               for st in p.statements}
        return hit

    def _conditions(self, cps: CompiledPolicySet, session: bool, r1: Result, r2: Result) -> tuple[str, ...]:
        keys: list[str] = []
        for m in (*r1.matched, *(m for m in r2.matched if m.effect == "Deny")):
            keys.extend(self.variants.unknown(m.policy_name, m.index, cps.policies, session))
        return tuple(dict.fromkeys(keys))

    # ------------------------------------------------------------ who can

    def entries(self) -> list[Entry]:
        if self._entries is None:
            self._entries = entries(self.snapshot.state)
        return self._entries

    def decide_groups(self, groups: Groups, actions: tuple[str, ...],
                      resource: str | None, extra: list[Policy], named: tuple[Statement, ...]
                      ) -> Iterable[tuple[ResolvedPrincipal, list[Entry], tuple[Policy, ...]]]:
        """For each group of `group_by_relevance`, split as Splitter says: (the deciding member resolved, the
        entries it decides for). `extra`: policies every member's decisions also read (resource policy, RCPs)."""
        for (kind, account, boundary, _content), (refs, items) in groups.items():
            identity = tuple(p for p in (self.relevance.policy(r) for r in refs) if p is not None)
            policies = [*identity, *extra, *self._org_policies(account)]
            if boundary:
                bp = self.relevance.policy(("m", boundary))
                if bp is not None:
                    policies.append(bp)
            first = self.resolve(items[0].member)
            if first is None:
                continue
            ctx = first.context

            def shared(key: str, ctx: dict[str, Any] = ctx) -> str | None:
                v = ctx.get(key)
                return v if isinstance(v, str) else None

            splitter = Splitter(policies, kind == "role", resource, named, shared)
            for part in splitter.split(items):
                rp = first if part[0] is items[0] else self.resolve(part[0].member)
                if rp is not None:
                    yield rp, part, identity

    def direct(self, action: str, resource: str) -> dict[str, Direct]:
        """Every principal allowed `action` on `resource` without assuming a role: ARN -> (outcome, kind)."""
        memo_key = (action.lower(), resource)
        hit = self._direct_memo.get(memo_key)
        if hit is not None:
            return hit
        out: dict[str, Direct] = {}
        snap = self.snapshot
        res_account = account_of(resource)
        _rkey, rpol = snap.resource_policy(resource)
        named = tuple(st for st in rpol.statements if st.principals is not None) if rpol else ()
        extra = ([rpol] if rpol else []) + [p for lvl in snap.org_levels(res_account, "rcp") or () for p in lvl]
        groups = group_by_relevance(self.entries(), self.relevance, (action.lower(),), resource)
        for rp, part, identity in self.decide_groups(groups, (action.lower(),), resource, extra, named):
            o = self.evaluate(rp, action, resource, identity)
            if o.status is not Status.NO:
                canons = self._canons(o, rp)
                for e in part:
                    out[e.member.reported] = (o, e.kind, self._own(o, canons, e) if e is not part[0] else o.deciding)
        if action.lower() != ASSUME_ROLE.lower():       # roots cannot assume roles (STS refuses them)
            for acct in snap.state.accounts:
                if acct == res_account:
                    continue                            # the owner's root: always allowed (WhoCan.owner_root)
                root = f"arn:aws:iam::{acct}:root"
                other = self.resolve(root)
                if other is not None:
                    o = self.evaluate(other, action, resource)
                    if o.status is not Status.NO:
                        out[root] = (o, "root", o.deciding)
            anonymous = self.resolve("anonymous")
            if anonymous is not None:
                o = self.evaluate(anonymous, action, resource)
                if o.status is not Status.NO:
                    out["*"] = (o, "anonymous", o.deciding)
        if len(self._direct_memo) > 4096:
            self._direct_memo.clear()
        self._direct_memo[memo_key] = out
        return out

    def _canons(self, o: Outcome, rp: ResolvedPrincipal) -> tuple[tuple[MatchedStatement, str | None], ...]:
        """Each deciding statement of `o` with its content key when it is an identity statement (members of
        the group have a statement with that content among their own policies)."""
        out: list[tuple[MatchedStatement, str | None]] = []
        for m in o.deciding:
            st = o.statements.get((m.policy_name, m.index))
            policy = next((p for p in rp.identity if p.name == m.policy_name), None)
            if m.policy_type != "identity" or st is None or policy is None:
                out.append((m, None))
            else:
                out.append((m, self.relevance.canonical(policy)[policy.statements.index(st)]))
        return tuple(out)

    def _own(self, o: Outcome, canons: tuple[tuple[MatchedStatement, str | None], ...], e: Entry
             ) -> tuple[MatchedStatement, ...]:
        """The deciding statements of `o` (decided for another member of e's group) as e's own: the group
        shares their content, not their names."""
        out: list[MatchedStatement] = []
        for m, canon in canons:
            mine = self.relevance.own_statement(e.refs, canon) if canon is not None else None
            out.append(m if mine is None else self._matched(mine))
        return tuple(out)

    def _matched(self, st: Statement) -> MatchedStatement:
        hit = self._matched_memo.get(st)
        if hit is None:
            if len(self._matched_memo) > 100_000:
                self._matched_memo.clear()
            hit = self._matched_memo[st] = MatchedStatement("identity", st.policy_name, st.sid, st.index, st.effect)
        return hit

    def who_can(self, action: str, resource: str) -> WhoCan:
        with collector_paused():
            return self._who_can(canonical_action(action), resource)

    def _who_can(self, action: str, resource: str) -> WhoCan:
        best: dict[str, Reach] = {}
        frontier: list[Reach] = []
        for arn, (o, kind, deciding) in self.direct(action, resource).items():
            reach = _reach(arn, kind, (), o.status, o.conditions, deciding)
            best[arn] = reach
            if kind == "role":
                frontier.append(reach)
        for _depth in range(MAX_CHAIN):
            nxt: list[Reach] = []
            for target in frontier:
                role_arn = target.principal
                for arn, (o, kind, deciding) in self.direct(ASSUME_ROLE, role_arn).items():
                    if kind not in ("user", "role") or arn == role_arn or arn in target.via:
                        continue
                    status = min(o.status, Status.CONDITIONAL if target.conditional else Status.YES)
                    conds = tuple(dict.fromkeys((*o.conditions, *target.conditions)))
                    reach = _reach(arn, kind, (role_arn, *target.via), status, conds, deciding)
                    old = best.get(arn)
                    if old is None or (old.conditional and not reach.conditional):
                        best[arn] = reach
                        if kind == "role":
                            nxt.append(reach)
            frontier = nxt
        owner = account_of(resource)
        owner_root = (f"arn:aws:iam::{owner}:root" if owner in self.snapshot.state.accounts
                      and action.lower() != ASSUME_ROLE.lower() else "")
        principals = sorted(best.values(), key=lambda r: (_KIND_ORDER.get(r.kind, 9), r.principal, r.via))
        return WhoCan(action, resource, principals, owner_root)

    # ------------------------------------------------------------ what a principal can do

    def patterns_for(self, rps: Sequence[ResolvedPrincipal], identity: Sequence[Policy] | None = None
                     ) -> list[tuple[Token, ...]]:
        """The Resource patterns that split the resource space for these principals: those of their
        policies (variables rendered with their derived keys), of every resource policy and RCP, every
        registered resource with tags or a policy, and every account (the store's and those policies name).
        `identity`: only these of their identity policies can apply to the question (the rest are left out)."""
        snap = self.snapshot
        state = snap.state
        out: dict[tuple[Token, ...], None] = {}
        numbers: set[str] = set(state.accounts)

        def add_policy(p: Policy, lookup: Callable[[str], str | None], session: bool) -> None:
            numbers.update(_ACCOUNT_NUMBER.findall(p.document))
            for st in p.statements:
                for r in st.resources or ():
                    if r.any:
                        continue
                    if not r.variable_names:
                        out[tuple(static_tokens(r.parts))] = None
                    elif all(fixed_key(k, session) for k in r.variable_names):
                        toks = render_tokens(r.parts, lookup)
                        if toks is not None:
                            out[tuple(toks)] = None

        for rp in rps:
            session = rp.requester.kind == "assumed-role"
            ctx = rp.context

            def lookup(key: str, ctx: dict[str, Any] = ctx) -> str | None:
                v = ctx.get(key)
                return v if isinstance(v, str) else None

            for p in (*(rp.identity if identity is None else identity), *([rp.boundary] if rp.boundary else []),
                      *self._org_policies(rp.account)):
                add_policy(p, lookup, session)
        for acct in state.accounts:
            for p in self._org_policies(acct):
                add_policy(p, lambda _k: None, False)
        # Registered resources differ from an unregistered ARN by their policy, and by their tags when a
        # condition reads aws:ResourceTag/*: only then are they classes of their own.
        own = [p for rp in rps for p in (*(rp.identity if identity is None else identity),
                                         *([rp.boundary] if rp.boundary else []), *self._org_policies(rp.account))]
        tags_read = any(k.lower().startswith(RESOURCE_TAG) for p in own
                        for st in p.statements for k in statement_keys(st)) or any(
            k.lower().startswith(RESOURCE_TAG) for acct in state.accounts for p in self._org_policies(acct)
            for st in p.statements for k in statement_keys(st))
        for arn, res in state.resources.items():
            if res.policy or (res.tags and tags_read):
                out[pattern_tokens(arn)] = None
                _key, rpol = snap.resource_policy(arn)
                if rpol is not None:
                    add_policy(rpol, lambda _k: None, False)
        for n in sorted(numbers):
            out[pattern_tokens(f"arn:*:*:*:{n}:*")] = None
        return list(out)

    def outcomes(self, rp: ResolvedPrincipal, patterns: list[tuple[Token, ...]], actions: Sequence[str] = ACTIONS,
                 region: int = 0, roles: Sequence[str] | None = None, identity: tuple[Policy, ...] | None = None
                 ) -> dict[tuple[str, str], tuple[Outcome, tuple[str, ...]]]:
        """(action, representative resource) -> (outcome, the patterns the representative matches), for
        every action and every resource class of `patterns`, the roles of the state for sts:AssumeRole.
        Restrictions for diff: `actions`; `region` > 0: only classes inside one of the first `region` patterns
        (and no `*`); `roles`: these role ARNs for sts:AssumeRole; `identity`: see relevant_set."""
        found = witnesses(patterns, pattern_tokens(KINESISVIDEO_UNIVERSE), region)
        texts = [pattern_text(p) for p in patterns]
        reps: list[tuple[str, tuple[str, ...]]] = [] if region else [("*", ())]
        reps += [(arn, tuple(texts[i] for i in sorted(sig))) for arn, sig in found
                 if not region or any(i < region for i in sig)]
        out: dict[tuple[str, str], tuple[Outcome, tuple[str, ...]]] = {}
        for action in actions:
            if action == ASSUME_ROLE:
                targets = roles if roles is not None else [r.arn for acct in self.snapshot.state.accounts.values()
                                                           for r in acct.roles.values()]
                for arn in targets:
                    out[(action, arn)] = (self.evaluate(rp, action, arn, identity), (arn,))
                continue
            for arn, matches in reps:
                out[(action, arn)] = (self.evaluate(rp, action, arn, identity), matches)
        return out

    def access_of(self, principal: str) -> Access:
        with collector_paused():
            return self._access_of(principal)

    def _access_of(self, principal: str) -> Access:
        found = self.member_of(principal)
        if found is None:
            return Access(principal, "unknown", [], known=False)
        kind, member = found
        rp = self.resolve(member)
        if rp is None:
            return Access(principal, kind, [], known=False)
        results = self.outcomes(rp, self.patterns_for([rp]))
        return Access(principal, kind, _grants(results))


def _reach(arn: str, kind: str, via: tuple[str, ...], status: Status, conditions: tuple[str, ...],
           deciding: tuple[MatchedStatement, ...]) -> Reach:
    conditional = status is not Status.YES
    return Reach(arn, kind, via, conditional, conditions if conditional else (), _as_dicts(deciding))


@lru_cache(maxsize=65536)
def _as_dicts(deciding: tuple[MatchedStatement, ...]) -> tuple[dict[str, Any], ...]:
    """The statements as JSON objects, shared by every Reach with the same ones (Reach.as_json copies them)."""
    return tuple(m.as_dict() for m in deciding)


def _grants(results: dict[tuple[str, str], tuple[Outcome, tuple[str, ...]]]) -> list[Grant]:
    """Allowed (action, resource class) pairs grouped by the statements' resource patterns and the denies."""
    denied: dict[str, set[str]] = {}
    for (action, _arn), (o, _m) in results.items():
        if o.status is Status.NO and o.denied_by:
            denied.setdefault(action, set()).update(f"{m.policy_name}#{m.index}" for m in o.denied_by)
    rows: dict[tuple[Any, ...], tuple[list[str], list[str]]] = {}
    deny_patterns: dict[str, tuple[str, ...]] = {}
    for (action, arn), (o, _m) in results.items():
        if o.status is Status.NO:
            continue
        resources: list[str] = []
        for m in o.deciding:
            st = o.statements.get((m.policy_name, m.index))
            described = _describe_resources(st) if st is not None else ()
            resources.extend(described or (arn,))
        if not resources:
            resources = [arn]
        cut: list[str] = []
        for ref in sorted(denied.get(action, ())):
            if ref not in deny_patterns:
                deny_patterns[ref] = _deny_resources(results, ref)
            cut.extend(deny_patterns[ref])
        key = (tuple(dict.fromkeys(resources)), tuple(dict.fromkeys(cut)), o.status is not Status.YES, o.conditions)
        actions, examples = rows.setdefault(key, ([], []))
        if action not in actions:
            actions.append(action)
        if arn not in examples:
            examples.append(arn)
    return [Grant(tuple(actions), key[0], key[1], key[2], key[3], tuple(examples))
            for key, (actions, examples) in rows.items()]


def _deny_resources(results: dict[tuple[str, str], tuple[Outcome, tuple[str, ...]]], ref: str) -> tuple[str, ...]:
    for (_action, arn), (o, _m) in results.items():
        for m in o.denied_by:
            if f"{m.policy_name}#{m.index}" == ref:
                st = o.statements.get((m.policy_name, m.index))
                return _describe_resources(st) if st is not None else (arn,)
    return ()


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
