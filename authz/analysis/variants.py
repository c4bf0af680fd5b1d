"""Three-valued conditions through the real engine: each policy set in a permissive and a strict variant.

A condition clause (or a Resource pattern's variable) that reads only keys the store derives from its own
records (the principal's and the resource's facts, spec 6: a caller can neither supply nor override them)
has one value for a given principal and resource, and stays as it is. Any other clause depends on the
request (aws:SourceIp, aws:CurrentTime, sts:ExternalId, ...) and is *unknown*. The engine then decides twice:

- permissive: unknown clauses of Allow statements count as true (a Resource with an unknown variable matches
  everything); Deny statements with an unknown clause are left out;
- strict: Allow statements with an unknown clause are left out; unknown clauses of Deny statements count as
  true (an unknown Resource matches everything).

The decision only grows with more applying Allow statements and fewer applying Deny statements, so an
Allow under the strict variant holds for every request context (`Status.YES`), and a request context that
is allowed is allowed under the permissive variant too (a Deny there means `Status.NO`). Between the two
the answer is `Status.CONDITIONAL`: possibly an over-approximation (the permissive variant treats unknown
clauses as independent, so contradictory conditions still count as satisfiable), never an under-approximation.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from ..evaluate import CompiledPolicySet, PolicySet
from ..policy.arn import ResourcePattern
from ..policy.conditions import Clause
from ..policy.model import Policy, Statement
from ..store.snapshot import DERIVED_KEYS

# Derived keys whose value a role session gets from the AssumeRole request (its session name, time,
# tags, source identity), not from the role: unknown for the sessions the analysis stands for.
SESSION_VARYING = frozenset({"aws:userid", "aws:tokenissuetime", "aws:multifactorauthage", "aws:sourceidentity",
                             "aws:rolesessionname"})
# Keys whose value differs between two principals with the same policies (groups are split on them).
PRINCIPAL_SPECIFIC = frozenset({"aws:username", "aws:userid", "aws:principalarn"})
PRINCIPAL_TAG = "aws:principaltag/"
RESOURCE_TAG = "aws:resourcetag/"

PERMISSIVE, STRICT = 0, 1
_MATCH_ALL = (ResourcePattern("*", ("*",)),)


def fixed_key(key: str, session: bool) -> bool:
    """Whether the store sets `key` from its records alone, for a user or root (`session` False) or for a
    session of a role without session tags."""
    k = key.lower()
    if k.startswith("sts:"):
        return False                        # derived from the AssumeRole request itself
    if session and (k in SESSION_VARYING or k.startswith(PRINCIPAL_TAG)):
        return False
    return k in DERIVED_KEYS or k.startswith((PRINCIPAL_TAG, RESOURCE_TAG))


def principal_specific(key: str) -> bool:
    k = key.lower()
    return k in PRINCIPAL_SPECIFIC or k.startswith(PRINCIPAL_TAG)


def clause_keys(c: Clause) -> tuple[str, ...]:
    return (c.key_name, *c.variable_names())


def statement_keys(st: Statement) -> Iterable[str]:
    """Every key a statement reads: its condition keys, their variables and its Resource variables."""
    for c in st.conditions:
        yield from clause_keys(c)
    for r in st.resources or ():
        yield from r.variable_names


def unknown_keys(st: Statement, session: bool) -> tuple[str, ...]:
    """The request-dependent keys the statement reads (as written), in order."""
    return tuple(dict.fromkeys(k for k in statement_keys(st) if not fixed_key(k, session)))


class _PolicyVariants:
    """The permissive and strict variants of one policy, and each statement's unknown keys."""

    __slots__ = ("variants", "unknown")

    def __init__(self, policy: Policy, session: bool) -> None:
        permissive: list[Statement] = []
        strict: list[Statement] = []
        self.unknown: dict[int, tuple[str, ...]] = {}
        for st in policy.statements:
            unknown = unknown_keys(st, session)
            if not unknown:
                permissive.append(st)
                strict.append(st)
                continue
            self.unknown[st.index] = unknown
            known = tuple(c for c in st.conditions if all(fixed_key(k, session) for k in clause_keys(c)))
            res_unknown = any(not fixed_key(k, session) for r in st.resources or () for k in r.variable_names)
            relaxed = _with(st, known, res_unknown)
            if st.allow:
                permissive.append(relaxed)
            else:
                strict.append(relaxed)
        self.variants = (
            policy if len(permissive) == len(policy.statements) and not self.unknown else
            dataclasses.replace(policy, statements=tuple(permissive)),
            policy if len(strict) == len(policy.statements) and not self.unknown else
            dataclasses.replace(policy, statements=tuple(strict)))


def _with(st: Statement, conditions: tuple[Clause, ...], match_all: bool) -> Statement:
    """The statement with only `conditions` (the known ones), matching every resource when `match_all`."""
    if not match_all:
        return dataclasses.replace(st, conditions=conditions)
    return dataclasses.replace(st, conditions=conditions, resources=_MATCH_ALL, not_resource=False, res_any=True,
                               res_fast=None)


class Variants:
    """Permissive and strict variants of policies and compiled policy sets, remembered by identity."""

    def __init__(self) -> None:
        self._policies: dict[tuple[Policy, bool], _PolicyVariants] = {}
        self._sets: dict[tuple[CompiledPolicySet, bool], tuple[CompiledPolicySet, CompiledPolicySet]] = {}

    def policy(self, policy: Policy, session: bool) -> _PolicyVariants:
        key = (policy, session)
        hit = self._policies.get(key)
        if hit is None:
            hit = self._policies[key] = _PolicyVariants(policy, session)
        return hit

    def unknown(self, policy_name: str, index: int, policies: PolicySet, session: bool) -> tuple[str, ...]:
        """The unknown keys of statement `index` of the policy named `policy_name` in `policies`."""
        for _group, p in policies.groups():
            if p.name == policy_name:
                return self.policy(p, session).unknown.get(index, ())
        return ()

    def sets(self, cps: CompiledPolicySet, session: bool) -> tuple[CompiledPolicySet, CompiledPolicySet]:
        """(permissive, strict) compiled variants of `cps`."""
        key = (cps, session)
        hit = self._sets.get(key)
        if hit is None:
            hit = self._sets[key] = (CompiledPolicySet(self._variant(cps.policies, PERMISSIVE, session)),
                                     CompiledPolicySet(self._variant(cps.policies, STRICT, session)))
        return hit

    def _variant(self, ps: PolicySet, mode: int, session: bool) -> PolicySet:
        def v(p: Policy) -> Policy:
            return self.policy(p, session).variants[mode]

        return PolicySet(
            identity=tuple(v(p) for p in ps.identity),
            resource=None if ps.resource is None else v(ps.resource),
            boundary=None if ps.boundary is None else v(ps.boundary),
            session=None if ps.session is None else tuple(v(p) for p in ps.session),
            scp_levels=None if ps.scp_levels is None else tuple(tuple(v(p) for p in lvl) for lvl in ps.scp_levels),
            rcp_levels=None if ps.rcp_levels is None else tuple(tuple(v(p) for p in lvl) for lvl in ps.rcp_levels))
