"""Principals as the analysis sees them: where their policies come from, and the groups one decision stands for.

For one question (an action, or a few, and perhaps a resource) most of a large state's policies are
irrelevant: a policy none of whose statements matches the action (and the resource) adds no Allow and no
Deny, so it cannot change a decision. Principals are therefore grouped by what is relevant to the question:
their kind, account and boundary, and the policies among theirs (inline, attached, through groups) that have
a statement that can match. Within a group one member decides for everyone with the same values of the keys
that differ between principals (aws:username, aws:userid, aws:PrincipalArn, aws:PrincipalTag/*) as far as
the relevant statements read them, the same matches of Resource patterns that use them, and the same
treatment by the Principal elements of the resource's policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..policy.arn import PreparedResource
from ..policy.model import Policy, Statement
from ..policy.principals import GrantKind, parse_requester
from ..store.snapshot import PolicyCompiler
from ..store.state import Account, IamState, Principal, inline_policy_name
from .variants import clause_keys, fixed_key, principal_specific

ANALYSIS_SESSION = "access-analysis"     # the session name of the role sessions the analysis stands for

# A policy a principal's come from: ("m", managed policy ARN) or ("i", owner ARN, policy name, document).
Ref = tuple[str, ...]
# What of one policy may apply to a question: (content keys of statements that may apply whoever asks,
# (statement, content key) of those that may apply depending on the user's own variable values).
Relevant = tuple[frozenset[str], tuple[tuple["Statement", str], ...]]


@dataclass(frozen=True, slots=True)
class Member:
    """One principal: how it is reported, how the store resolves it, and its requester id."""

    reported: str               # user ARN, or the role ARN for a role's session
    principal: str              # user ARN or session ARN
    access_key: str             # the session's access key ("" for users)
    userid: str                 # aws:userid (user unique id, or role id:session name)


class Entry:
    """A member with what its policies come from and its own values of the principal-specific keys.
    A plain class with slots: a large state has one per principal, built for every question."""

    __slots__ = ("member", "kind", "account", "boundary", "refs", "_record", "_values")

    def __init__(self, member: Member, kind: str, account: str, boundary: str | None, refs: tuple[Ref, ...],
                 record: Principal) -> None:
        self.member = member
        self.kind = kind                # user | role
        self.account = account
        self.boundary = boundary
        self.refs = refs
        self._record = record
        self._values: Mapping[str, str] | None = None

    @property
    def values(self) -> Mapping[str, str]:
        """Lower-cased principal-specific keys the store derives for this principal, and their values."""
        if self._values is None:
            p = self._record
            if self.kind == "role":
                self._values = {"aws:principalarn": p.arn}
            else:
                values = {"aws:username": p.name, "aws:userid": p.unique_id, "aws:principalarn": p.arn}
                values.update((f"aws:principaltag/{k.lower()}", v) for k, v in p.tags)
                self._values = values
        return self._values


def session_key(role_arn: str) -> str:
    import hashlib

    return "ASIA" + hashlib.sha256(role_arn.encode()).hexdigest().upper()[:20]


def user_member(u: Principal) -> Member:
    return Member(u.arn, u.arn, "", u.unique_id)


def role_member(r: Principal) -> Member:
    partition = r.arn.split(":", 2)[1]
    return Member(r.arn, f"arn:{partition}:sts::{r.account}:assumed-role/{r.name}/{ANALYSIS_SESSION}",
                  session_key(r.arn), f"{r.unique_id}:{ANALYSIS_SESSION}")


def _own_refs(p: Principal) -> tuple[Ref, ...]:
    return (*(("i", p.arn, name, doc) for name, doc in p.inline), *(("m", arn) for arn in p.attached))


def _user_entry(acct: Account, u: Principal, group_refs: dict[str, tuple[Ref, ...]]) -> Entry:
    refs = _own_refs(u)
    for gname in u.groups:
        g = group_refs.get(gname)
        if g is None:
            group = acct.groups.get(gname.lower())
            g = group_refs[gname] = _own_refs(group) if group is not None else ()
        refs += g
    return Entry(user_member(u), "user", acct.id, u.boundary, refs, u)


def _role_entry(acct: Account, r: Principal) -> Entry:
    return Entry(role_member(r), "role", acct.id, r.boundary, _own_refs(r), r)


def entries(state: IamState) -> list[Entry]:
    """Every user and role of the state, with its policy references (groups expanded)."""
    out: list[Entry] = []
    for acct in state.accounts.values():
        group_refs: dict[str, tuple[Ref, ...]] = {}
        out.extend(_user_entry(acct, u, group_refs) for u in acct.users.values())
        out.extend(_role_entry(acct, r) for r in acct.roles.values())
    return out


def entries_of(state: IamState, principals: Iterable[tuple[str, Principal]]) -> list[Entry]:
    """The entries of some users and roles of the state, given as (kind, record)."""
    out: list[Entry] = []
    group_refs: dict[tuple[str, str], tuple[Ref, ...]] = {}
    for kind, p in principals:
        acct = state.accounts.get(p.account)
        if acct is None:
            continue
        if kind == "role":
            out.append(_role_entry(acct, p))
            continue
        refs = _own_refs(p)
        for gname in p.groups:
            g = group_refs.get((p.account, gname))
            if g is None:
                group = acct.groups.get(gname.lower())
                g = group_refs[(p.account, gname)] = _own_refs(group) if group is not None else ()
            refs += g
        out.append(Entry(user_member(p), "user", acct.id, p.boundary, refs, p))
    return out


def _no_lookup(_key: str) -> str | None:
    return None


def may_match(st: Statement, actions: Iterable[str], resource: PreparedResource | None) -> bool:
    """Whether the statement can apply to one of `actions` (lower-cased) on `resource` (None: any resource).
    Conservative: a NotResource, or a Resource with variables, may match."""
    if not st.effect_valid or not any(st.matches_action(a) for a in actions):
        return False
    if resource is None or st.resources is None or st.res_any or st.not_resource:
        return True
    return any(r.variable_names or r.matches(resource, _no_lookup) for r in st.resources)


class Relevance:
    """Compiled policies by reference, and which are relevant to a question (remembered)."""

    def __init__(self, state: IamState, compiler: PolicyCompiler) -> None:
        self._state = state
        self._compiler = compiler
        self._policies: dict[Ref, Policy | None] = {}
        self._memo: dict[tuple[Ref, tuple[str, ...], str | None], Relevant] = {}
        self._canon: dict[Policy, tuple[str, ...]] = {}
        self._by_content: dict[Policy, dict[str, Statement]] = {}

    def policy(self, ref: Ref) -> Policy | None:
        hit = self._policies.get(ref, False)
        if hit is False:
            if ref[0] == "m":
                managed = self._state.policies.get(ref[1])
                hit = None if managed is None else self._compiler.get(ref[1], managed.document)
            else:
                hit = self._compiler.get(inline_policy_name(ref[1], ref[2]), ref[3])
            self._policies[ref] = hit
        return hit  # type: ignore[return-value]

    def canonical(self, policy: Policy) -> tuple[str, ...]:
        """Each statement's content without its Sid (and with the policy's Version, which decides whether
        `${...}` is a variable): two statements with the same content decide alike."""
        hit = self._canon.get(policy)
        if hit is None:
            try:
                raw = json.loads(policy.document).get("Statement") if policy.document else None
            except (ValueError, AttributeError):
                raw = None
            items = raw if isinstance(raw, list) else [raw]
            keys = []
            for st in policy.statements:
                body = items[st.index] if st.index < len(items) and isinstance(items[st.index], dict) else None
                keys.append(f"{policy.version}|" + (json.dumps({k: v for k, v in body.items() if k != "Sid"},
                                                                sort_keys=True) if body is not None
                                                     else f"{policy.name}#{st.index}"))
            hit = self._canon[policy] = tuple(keys)
        return hit

    def relevant(self, ref: Ref, actions: tuple[str, ...], resource: str | None) -> Relevant:
        """The statements of the policy that may apply to one of `actions` on `resource`: (the content keys of
        those that may whoever asks, those that may depending on the asking user: a Resource with
        aws:username, aws:userid, aws:PrincipalArn or aws:PrincipalTag/* variables, with their keys)."""
        key = (ref, actions, resource)
        hit = self._memo.get(key)
        if hit is None:
            p = self.policy(ref)
            prepared = None if resource is None else PreparedResource(resource)
            static: list[str] = []
            per_user: list[tuple[Statement, str]] = []
            if p is not None:
                for st, canon in zip(p.statements, self.canonical(p)):
                    if may_match(st, actions, prepared):
                        if prepared is not None and _user_dependent(st):
                            per_user.append((st, canon))
                        else:
                            static.append(canon)
            hit = (frozenset(static), tuple(per_user))
            if len(self._memo) > 200_000:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    def own_statement(self, refs: tuple[Ref, ...], canon: str) -> Statement | None:
        """The statement with content `canon` among the policies `refs`."""
        for r in refs:
            p = self.policy(r)
            if p is not None:
                by_content = self._by_content.get(p)
                if by_content is None:
                    by_content = self._by_content[p] = {}
                    for st, c in zip(p.statements, self.canonical(p)):
                        by_content.setdefault(c, st)
                hit = by_content.get(canon)
                if hit is not None:
                    return hit
        return None


def _user_dependent(st: Statement) -> bool:
    """A Resource (not NotResource) whose every pattern with variables reads only user-specific keys."""
    if st.not_resource or not st.resources or not any(r.variable_names for r in st.resources):
        return False
    return all(principal_specific(k) and fixed_key(k, False) for r in st.resources for k in r.variable_names)


def _applies_to(st: Statement, e: Entry, resource: PreparedResource) -> bool:
    """Whether the statement's Resource matches for user `e` (its own variable values)."""
    values = e.values

    def lookup(k: str) -> str | None:
        return values.get(k)

    return any(r.matches(resource, lookup) for r in st.resources or ())


Groups = dict[tuple[Any, ...], tuple[tuple[Ref, ...], list[Entry]]]


def group_by_relevance(items: list[Entry], relevance: Relevance, actions: tuple[str, ...], resource: str | None
                       ) -> Groups:
    """Entries by (kind, account, boundary, the content of the statements of theirs that may apply), each group
    with the policies of its first entry that hold those statements. A statement whose Resource uses
    user-specific variables counts for the users it matches for (rendered with the user's own values, as the
    store's context has them)."""
    groups: Groups = {}
    rel = relevance.relevant
    prepared = PreparedResource(resource) if resource is not None else None
    for e in items:
        refs: list[Ref] = []
        content: set[str] = set()
        for r in e.refs:
            static, per_user = rel(r, actions, resource)
            used = bool(static)
            content.update(static)
            for st, canon in per_user:
                if e.kind != "user" or prepared is None or _applies_to(st, e, prepared):
                    content.add(canon)
                    used = True
            if used:
                refs.append(r)
        key = (e.kind, e.account, e.boundary, frozenset(content))
        slot = groups.get(key)
        if slot is None:
            groups[key] = (tuple(refs), [e])
        else:
            slot[1].append(e)
    return groups


class Splitter:
    """Splits a group's entries into those one decision stands for (see the module docstring)."""

    def __init__(self, policies: Iterable[Policy], session: bool, resource: str | None,
                 named: tuple[Statement, ...], shared: Callable[[str], str | None]) -> None:
        pols = list(policies)
        self.keys = sorted({k.lower() for p in pols for st in p.statements for c in st.conditions
                            for k in clause_keys(c) if principal_specific(k) and fixed_key(k, session)})
        self.patterned = [st for p in pols for st in p.statements if st.resources is not None and any(
            principal_specific(k) and fixed_key(k, session) for r in st.resources for k in r.variable_names)]
        self.resource = PreparedResource(resource) if resource is not None else None
        self.named = named
        self.shared = shared              # the group's common values of the other fixed keys
        self.individual = bool(self.patterned) and resource is None

    def key(self, e: Entry) -> tuple[Any, ...]:
        if self.individual:
            return (e.member.reported,)
        values = e.values
        parts: list[Any] = [tuple(values.get(k) for k in self.keys)]
        if self.patterned and self.resource is not None:
            def lookup(k: str) -> str | None:
                return values.get(k) if principal_specific(k) else self.shared(k)
            parts.append(tuple(any(r.matches(self.resource, lookup) for r in st.resources or ())
                               for st in self.patterned))
        if self.named:
            r = parse_requester(e.member.principal, e.member.userid)
            parts.append(tuple(GrantKind(en.match(r)) for st in self.named for en in st.principals or ()))
        return tuple(parts)

    def split(self, items: list[Entry]) -> list[list[Entry]]:
        if not self.keys and not self.patterned and not self.named:
            return [items]
        out: dict[tuple[Any, ...], list[Entry]] = {}
        for e in items:
            out.setdefault(self.key(e), []).append(e)
        return list(out.values())
