"""Compiled, immutable policies: statements with precompiled action, resource, principal and condition matchers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .arn import ResourcePattern
from .conditions import Clause, parse_operator, value_text
from .glob import Glob, tokens_of
from .principals import PrincipalEntry, compile_principal
from .variables import parse_parts

VERSION_2012 = "2012-10-17"
VERSION_2008 = "2008-10-17"


class PolicyType(str, Enum):
    IDENTITY = "identity"
    RESOURCE = "resource"
    TRUST = "trust"
    BOUNDARY = "boundary"
    SESSION = "session"
    SCP = "scp"
    RCP = "rcp"

    @classmethod
    def parse(cls, text: str) -> "PolicyType":
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown policy type {text!r}; use one of {names}") from None


class ActionPattern:
    """One Action/NotAction entry. Case-insensitive; `?` supported ([UNC] spec 1.5)."""

    __slots__ = ("source", "any", "service", "glob", "literal", "valid")

    def __init__(self, source: str) -> None:
        self.source = source
        self.any = source == "*"
        self.service = ""
        self.literal: str | None = None
        self.glob: Glob | None = None
        self.valid = True
        if self.any:
            return
        svc, sep, name = source.lower().partition(":")
        # No vendor prefix, a second colon, white space or commas: a literal that matches nothing.
        if (not sep or not svc or ":" in name or any(c in source for c in " \t\r\n,")
                or "*" in svc or "?" in svc):
            self.valid = False
            return
        self.service = svc
        g = Glob(tokens_of(name), name)
        if g.kind == "literal":
            self.literal = f"{svc}:{name}"
        else:
            self.glob = g

    def matches(self, action_lower: str) -> bool:
        if self.any:
            return True
        if not self.valid:
            return False
        if self.literal is not None:
            return action_lower == self.literal
        svc, _, name = action_lower.partition(":")
        return svc == self.service and self.glob.match(name)  # type: ignore[union-attr]


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


@dataclass(frozen=True, slots=True, eq=False)
class Statement:
    index: int
    sid: str
    allow: bool
    actions: tuple[ActionPattern, ...]
    not_action: bool
    resources: tuple[ResourcePattern, ...] | None   # None: no Resource element (trust policies)
    not_resource: bool
    principals: tuple[PrincipalEntry, ...] | None   # None: no Principal element
    not_principal: bool
    conditions: tuple[Clause, ...]
    policy_name: str
    broken: str = ""          # why part of the statement cannot be evaluated ("" when fine)
    effect_valid: bool = True  # False: Effect is neither Allow nor Deny; the statement is ignored
    # Precomputed for the hot path: the resource test needs no work at all (no Resource element,
    # or "Resource": "*"), or is a set of anchored regexes over the normalised ARN.
    res_any: bool = False
    res_fast: tuple[Any, ...] | None = None

    @property
    def effect(self) -> str:
        return "Allow" if self.allow else "Deny"

    def matches_action(self, action_lower: str) -> bool:
        hit = False
        for a in self.actions:
            if a.matches(action_lower):
                hit = True
                break
        return not hit if self.not_action else hit

    def condition_keys(self) -> tuple[str, ...]:
        """Context keys the statement reads (condition keys and variables), as written."""
        keys: list[str] = []
        for c in self.conditions:
            keys.append(c.key_name)
            keys.extend(c.variable_names())
        for r in self.resources or ():
            keys.extend(r.variable_names)
        return tuple(dict.fromkeys(keys))


@dataclass(frozen=True, slots=True, eq=False)
class Policy:
    name: str
    version: str | None
    statements: tuple[Statement, ...]
    document: str = field(repr=False)     # canonical compact JSON of the source document

    @property
    def variables_enabled(self) -> bool:
        return self.version == VERSION_2012


def statement_shape_problem(doc: Any) -> str | None:
    """Why a document cannot be evaluated even leniently, or None: a Statement entry that is not an
    object could have been a Deny, and leaving it out could turn a Deny into an Allow. Entry points
    that evaluate without validating (Simulate, `authz simulate`) refuse such a document."""
    raw = doc.get("Statement") if isinstance(doc, dict) else None
    if raw is None:
        return None
    for i, s in enumerate(_as_list(raw)):
        if not isinstance(s, dict):
            where = f"Statement[{i}]" if isinstance(raw, list) else "Statement"
            return (f"{where} is {type(s).__name__ if s is not None else 'null'}, not a statement object; "
                    "a statement that cannot be read could have been a Deny")
    return None


def compile_policy(doc: Any, name: str = "") -> Policy:
    """Compile a parsed document leniently: what cannot match is compiled to match nothing.

    Validation is separate (validate.py). Simulation evaluates documents the validator would
    reject, as AWS's simulator does; an element that cannot be understood never grants, and a
    Deny statement whose condition cannot be understood still denies (fail closed).
    """
    if not isinstance(doc, dict):
        doc = {}
    version = doc.get("Version") if isinstance(doc.get("Version"), str) else None
    variables = version == VERSION_2012
    raw_statements = _as_list(doc.get("Statement"))
    statements = tuple(_compile_statement(i, s, name, variables) for i, s in enumerate(raw_statements)
                       if isinstance(s, dict))
    try:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, sort_keys=False)
    except RecursionError:   # nested about as deep as json.loads allows: no statement can use that part
        text = ""
    return Policy(name, version, statements, text)


def _compile_statement(index: int, s: dict[str, Any], policy_name: str, variables: bool) -> Statement:
    broken = ""
    effect = s.get("Effect")
    allow = effect == "Allow"
    not_action = "NotAction" in s and "Action" not in s
    actions = tuple(ActionPattern(a) if isinstance(a, str) else ActionPattern("")
                    for a in _as_list(s.get("NotAction") if not_action else s.get("Action")))
    resources: tuple[ResourcePattern, ...] | None = None
    not_resource = "NotResource" in s and "Resource" not in s
    if "Resource" in s or "NotResource" in s:
        raw = _as_list(s.get("NotResource") if not_resource else s.get("Resource"))
        resources = tuple(ResourcePattern(r, parse_parts(r, variables)) if isinstance(r, str)
                          else ResourcePattern("\0invalid", ("\0invalid",)) for r in raw)
    principals = None
    not_principal = "NotPrincipal" in s and "Principal" not in s
    if "Principal" in s or "NotPrincipal" in s:
        principals = compile_principal(s.get("NotPrincipal") if not_principal else s.get("Principal"))
    clauses: list[Clause] = []
    cond = s.get("Condition")
    if cond is not None:
        if not isinstance(cond, dict):
            broken = broken or "Condition is not an object"
        else:
            for op_name, block in cond.items():
                op = parse_operator(op_name)
                if op is None or not isinstance(block, dict):
                    broken = broken or f"condition operator {op_name!r} cannot be evaluated"
                    continue
                for key, vals in block.items():
                    texts = [value_text(v) for v in _as_list(vals)]
                    if any(t is None for t in texts):
                        broken = broken or f"condition values of {key!r} cannot be evaluated"
                        continue
                    clauses.append(Clause(op, key, [t for t in texts if t is not None], variables=variables))
    raw_sid = s.get("Sid")
    sid = raw_sid if isinstance(raw_sid, str) else ""
    res_any = resources is None or (not not_resource and any(r.any for r in resources))
    res_fast = None
    if resources is not None and all(r.static is not None and r.static.regex is not None for r in resources):
        res_fast = tuple(r.static.regex for r in resources)  # type: ignore[union-attr]
    return Statement(index, sid, allow, actions, not_action, resources, not_resource, principals, not_principal,
                     tuple(clauses), policy_name, broken, effect in ("Allow", "Deny"), res_any, res_fast)
