"""What a change to the IAM state allows: every (principal, action, resource class) whose status differs.

Only what the change touches is recomputed.

A principal's decisions read its own records (user or role, its groups, their inline and managed policies,
its boundary), its account's organization policies and facts, and the resource's registration (policy,
tags), its account's RCPs and facts. So the diff compares the two states record by record first:

- an organization change (SCPs, RCPs, org id or paths, an account added or removed) touches everyone:
  every principal is compared;
- otherwise the principals compared are those whose records, groups or policies (by document text) differ;
  each is compared over every action and every resource class of the old and the new policies together
  (classes.py), so an access that only one side's patterns can name is still found;
- a registered resource whose policy or tags differ, and a role whose trust policy differs, is compared for
  every principal (who can act on it, directly) on both sides.

Role chains need no separate pass: a principal newly reaching a resource through a role either newly may
assume a role (an sts:AssumeRole change) or the role's session newly may act (a change of the role).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping

from ..policy.arn import service_of
from ..policy.glob import Token
from ..policy.model import Statement
from ..policy.variables import static_tokens
from ..store.snapshot import ResolvedPrincipal
from ..store.state import Account, IamState, Principal
from .engine import (ACTIONS, ASSUME_ROLE, KINESISVIDEO_ACTIONS, Analyzer, Member, Source, analyzer,
                     collector_paused, group_key, role_member, user_member)
from .principals import Entry, Ref, Splitter, entries_of, group_by_relevance
from .model import AccessDiff, Change, Status


def _doc(state: IamState, arn: str) -> str | None:
    p = state.policies.get(arn)
    return None if p is None else p.document


def _org(a: Account | None) -> Any:
    return None if a is None else (a.scp_levels, a.rcp_levels, a.org_id, a.org_paths)


class _Touch:
    """Which principals of the two states the change touches."""

    def __init__(self, s0: IamState, s1: IamState) -> None:
        self.everything = set(s0.accounts) != set(s1.accounts) or any(
            _org(s0.accounts.get(a)) != _org(s1.accounts.get(a)) for a in s1.accounts)
        self.policies = {arn for arn in {*s0.policies, *s1.policies} if _doc(s0, arn) != _doc(s1, arn)}
        self.groups: set[tuple[str, str]] = set()
        for acct in {*s0.accounts, *s1.accounts}:
            a0, a1 = s0.accounts.get(acct), s1.accounts.get(acct)
            for name in {*(a0.groups if a0 else ()), *(a1.groups if a1 else ())}:
                g0 = a0.groups.get(name) if a0 else None
                g1 = a1.groups.get(name) if a1 else None
                if g0 != g1 or any(arn in self.policies for g in (g0, g1) if g is not None for arn in g.attached):
                    self.groups.add((acct, name))
        self.group_records = {(acct, name) for acct in {*s0.accounts, *s1.accounts}
                              for name in {*(s0.accounts[acct].groups if acct in s0.accounts else ()),
                                           *(s1.accounts[acct].groups if acct in s1.accounts else ())}
                              if (s0.accounts[acct].groups.get(name) if acct in s0.accounts else None)
                              != (s1.accounts[acct].groups.get(name) if acct in s1.accounts else None)}
        self._memo: dict[tuple[Any, ...], bool] = {}

    def documents_only(self, p: Principal) -> bool:
        """Whether what changed for `p` (whose own record did not) is only the documents of managed policies it
        has as identity policies, directly or through groups (not its boundary, not its groups' records)."""
        return ((p.boundary is None or p.boundary not in self.policies)
                and not any((p.account, g.lower()) in self.group_records for g in p.groups))

    def touches(self, p: Principal) -> bool:
        key = (p.account, p.attached, p.groups, p.boundary)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = (any(a in self.policies for a in p.attached)
                                     or (p.boundary is not None and p.boundary in self.policies)
                                     or any((p.account, g.lower()) in self.groups for g in p.groups))
        return hit


def _pairs(s0: IamState, s1: IamState, kind: str) -> dict[str, tuple[Principal | None, Principal | None]]:
    out: dict[str, tuple[Principal | None, Principal | None]] = {}
    for acct in {*s0.accounts, *s1.accounts}:
        a0, a1 = s0.accounts.get(acct), s1.accounts.get(acct)
        t0 = a0.table(kind) if a0 else {}
        t1 = a1.table(kind) if a1 else {}
        for name in {*t0, *t1}:
            p0, p1 = t0.get(name), t1.get(name)
            if p0 is not None and p1 is not None and p0.arn != p1.arn:
                out[p0.arn] = (p0, None)
                out[p1.arn] = (None, p1)
            else:
                arn = (p0 or p1).arn  # type: ignore[union-attr]
                out[arn] = (p0, p1)
    return out


def _compare(old: Analyzer, new: Analyzer, r0: ResolvedPrincipal | None, r1: ResolvedPrincipal | None,
             names: list[str], changes: dict[tuple[str, str, str], Change]) -> None:
    """Every action on every resource class of both sides' patterns, for principal `r0` (old) and `r1` (new);
    each difference is recorded for every name in `names` (the members the two decide for)."""
    patterns = list(dict.fromkeys([*(old.patterns_for([r0]) if r0 else []), *(new.patterns_for([r1]) if r1 else [])]))
    _record(old.outcomes(r0, patterns) if r0 else {}, new.outcomes(r1, patterns) if r1 else {}, names, changes)


def _record(o0: Mapping[tuple[str, str], Any], o1: Mapping[tuple[str, str], Any], names: Iterable[str],
            changes: dict[tuple[str, str, str], Change]) -> None:
    """Record, for every name in `names`, each (action, resource class) whose status differs between the old
    outcomes `o0` and the new `o1` (absent: not allowed), with the statements that decide it."""
    for pair in {*o0, *o1}:
        a, b = o0.get(pair), o1.get(pair)
        st0 = a[0].status if a else Status.NO
        st1 = b[0].status if b else Status.NO
        if st0 != st1:
            matches = b[1] if b else a[1] if a else ()
            for name in names:
                changes[(name, pair[0], pair[1])] = Change(name, pair[0], pair[1], matches, st0, st1)


def _changed_statements(old: Analyzer, new: Analyzer, arns: set[str]) -> list[Statement]:
    """The statements of the changed managed policies that one side has and the other has not (by content)."""
    out: list[Statement] = []
    for arn in arns:
        sides = [(an, an.relevance.policy(("m", arn))) for an in (old, new)]
        counts = [Counter(an.relevance.canonical(p)) if p is not None else Counter() for an, p in sides]
        for (an, p), mine, theirs in ((sides[0], counts[0], counts[1]), (sides[1], counts[1], counts[0])):
            if p is None:
                continue
            extra = mine - theirs
            for st, canon in zip(p.statements, an.relevance.canonical(p)):
                if extra[canon] > 0:
                    extra[canon] -= 1
                    out.append(st)
    return out


def _region(statements: list[Statement]) -> list[tuple[Token, ...]] | None:
    """The Resource patterns the changed statements can apply within, or None when they are not confined."""
    out: list[tuple[Token, ...]] = []
    for st in statements:
        if st.resources is None or st.res_any or st.not_resource or any(r.variable_names for r in st.resources):
            return None
        out.extend(tuple(static_tokens(r.parts)) for r in st.resources)
    return list(dict.fromkeys(out))


def _documents_diff(old: Analyzer, new: Analyzer, touch: _Touch, arns: dict[str, tuple[str, Principal, Principal]],
                    changes: dict[tuple[str, str, str], Change]) -> None:
    """Principals whose only change is the text of managed identity policies they have. Only the statements
    that differ can change a decision, so only the actions they name, within the resources they name, are
    compared; and principals are grouped by the content of their statements that name those actions."""
    changed = _changed_statements(old, new, touch.policies)
    actions = tuple(a for a in ACTIONS if any(st.effect_valid and st.matches_action(a.lower()) for st in changed))
    if not actions:
        return
    lowered = tuple(a.lower() for a in actions)
    region = _region(changed)
    roles = sorted({r.arn for state in (old.base.state, new.base.state) for acct in state.accounts.values()
                    for r in acct.roles.values()})

    def keys(an: Analyzer, side: int) -> dict[str, tuple[tuple[Any, ...], tuple[Ref, ...], Entry]]:
        picked = entries_of(an.snapshot.state, ((kind, pair[side]) for kind, *pair in arns.values()))
        out = {}
        for key, (refs, items) in group_by_relevance(picked, an.relevance, lowered, None).items():
            for e in items:
                out[e.member.reported] = (key, refs, e)
        return out

    k0, k1 = keys(old, 0), keys(new, 1)
    batches: dict[tuple[Any, ...], list[str]] = {}
    for arn in arns:
        if arn in k0 and arn in k1 and k0[arn][0] != k1[arn][0]:
            batches.setdefault((k0[arn][0], k1[arn][0]), []).append(arn)
    for names in batches.values():
        _key0, refs0, e0 = k0[names[0]]
        _key1, refs1, e1 = k1[names[0]]
        id0 = tuple(p for p in (old.relevance.policy(r) for r in refs0) if p is not None)
        id1 = tuple(p for p in (new.relevance.policy(r) for r in refs1) if p is not None)
        first0, first1 = old.resolve(e0.member), new.resolve(e1.member)
        if first0 is None or first1 is None:
            continue
        ctx = first1.context

        def shared(key: str, ctx: dict[str, Any] = ctx) -> str | None:
            v = ctx.get(key)
            return v if isinstance(v, str) else None

        policies = [*id0, *id1, *new._org_policies(e1.account)]
        if first1.boundary is not None:
            policies.append(first1.boundary)
        splitter = Splitter(policies, e1.kind == "role", None, (), shared)
        for part in splitter.split([k1[n][2] for n in names]):
            rp0 = old.resolve(k0[part[0].member.reported][2].member)
            rp1 = new.resolve(part[0].member)
            if rp0 is None or rp1 is None:
                continue
            patterns = list(dict.fromkeys([*(region or []), *old.patterns_for([rp0], id0),
                                           *new.patterns_for([rp1], id1)]))
            within = len(region) if region else 0
            _record(old.outcomes(rp0, patterns, actions, within, roles, id0),
                    new.outcomes(rp1, patterns, actions, within, roles, id1),
                    [e.member.reported for e in part], changes)


def access_diff(old: Analyzer, new: Analyzer) -> AccessDiff:
    """The diff of two analysed states (see the module docstring)."""
    with collector_paused():
        return _access_diff(old, new)


def _access_diff(old: Analyzer, new: Analyzer) -> AccessDiff:
    s0, s1 = old.base.state, new.base.state
    touch = _Touch(s0, s1)
    changes: dict[tuple[str, str, str], Change] = {}

    # Principals whose own records or policies changed: every action, every resource class.
    batches: dict[tuple[Any, ...], list[tuple[str, Member | None, Member | None]]] = {}
    documents: dict[str, tuple[str, Principal, Principal]] = {}
    for kind in ("user", "role"):
        member = user_member if kind == "user" else role_member
        for arn, (p0, p1) in _pairs(s0, s1, kind).items():
            if not (touch.everything or p0 is None or p1 is None or p0 != p1 or touch.touches(p0)
                    or touch.touches(p1)):
                continue
            if not touch.everything and p0 is not None and p1 is not None and p0 == p1 and touch.documents_only(p0):
                documents[arn] = (kind, p0, p1)
                continue
            key = (kind, group_key(kind, p0) if p0 else None, group_key(kind, p1) if p1 else None)
            batches.setdefault(key, []).append((arn, member(p0) if p0 else None, member(p1) if p1 else None))
    for batch in batches.values():
        _, m0, m1 = batch[0]
        rp0 = old.resolve(m0) if m0 else None
        rp1 = new.resolve(m1) if m1 else None
        specific = (rp0 is not None and old.specific_policies(rp0)) or (rp1 is not None and new.specific_policies(rp1))
        for arn, n0, n1 in (batch if specific else batch[:1]):
            names = [a for a, _m0, _m1 in batch] if not specific else [arn]
            _compare(old, new, old.resolve(n0) if n0 else None, new.resolve(n1) if n1 else None, names, changes)

    if documents:
        _documents_diff(old, new, touch, documents, changes)

    # An organization change reaches the account roots and anonymous callers too.
    if touch.everything:
        others = [f"arn:aws:iam::{a}:root" for a in sorted({*s0.accounts, *s1.accounts})] + ["anonymous"]
        for name in others:
            _compare(old, new, old.resolve(name), new.resolve(name), ["*" if name == "anonymous" else name], changes)

    # Resources whose policy or tags changed, roles whose trust policy changed: every principal, directly.
    targets: list[tuple[str, tuple[str, ...]]] = []
    for arn in {*s0.resources, *s1.resources}:
        if s0.resources.get(arn) != s1.resources.get(arn):
            targets.append((arn, KINESISVIDEO_ACTIONS if service_of(arn) == "kinesisvideo" else ()))
    for arn, (p0, p1) in _pairs(s0, s1, "role").items():
        if touch.everything or (p0.trust if p0 else None) != (p1.trust if p1 else None) or (p0 is None) != (p1 is None):
            targets.append((arn, (ASSUME_ROLE,)))
    for arn, actions in targets:
        for action in actions:
            d0, d1 = old.direct(action, arn), new.direct(action, arn)
            for name in {*d0, *d1}:
                st0 = d0[name][0].status if name in d0 else Status.NO
                st1 = d1[name][0].status if name in d1 else Status.NO
                if st0 != st1 and (name, action, arn) not in changes:
                    changes[(name, action, arn)] = Change(name, action, arn, (arn,), st0, st1)

    ordered = sorted(changes.values(), key=lambda c: (c.principal, c.action, c.resource))
    return AccessDiff([c for c in ordered if c.widens], [c for c in ordered if not c.widens])


MAX_REFUSAL_CHANGES = 10     # newly allowed accesses a refusal message names (the rest are counted)


def no_new_access(old: IamState, new: IamState) -> str:
    """The --require-no-new-access check: "" when NEW allows nothing OLD did not, else the refusal naming
    the first MAX_REFUSAL_CHANGES new accesses (`authz access diff` lists them all)."""
    result = diff(old, new)
    if not result.grants_new_access:
        return ""
    return (f"the bundle grants new access, refused (--require-no-new-access): {len(result.added)} newly allowed "
            f"(principal, action, resource class): {result.summary(MAX_REFUSAL_CHANGES)}; run `authz access diff "
            "OLD NEW` for the whole list")


def diff(old: Source, new: Source) -> AccessDiff:
    """The (principal, action, resource class) access NEW allows and OLD did not, and the reverse."""
    return access_diff(analyzer(old), analyzer(new))
