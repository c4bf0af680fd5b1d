"""The policy linter: coded findings on valid policies, from the service tables in data/actions.json.

Findings: unknown names, resource-type and operator mismatches, risky grants, dead statements (docs/lint.md).
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from importlib import resources
from typing import Any, Iterator, Sequence

from .arn import RESOURCE, ResourcePattern, lower_head, split_arn
from .conditions import OperatorName, parse_operator
from .glob import Glob, tokens_of
from .jsontext import child_path
from .model import ActionPattern, PolicyType, Statement, compile_policy

__all__ = ["Severity", "Finding", "RULES", "Tables", "tables", "lint_document", "json_positions", "yaml_positions",
           "locate", "sarif_log"]

DATA_FILE = "actions.json"
SUGGEST_CUTOFF = 0.6        # difflib similarity below which no "did you mean" is offered
SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


class Severity(str, Enum):
    """The finding types of IAM Access Analyzer's policy checks, most severe first."""

    ERROR = "ERROR"
    SECURITY_WARNING = "SECURITY_WARNING"
    WARNING = "WARNING"
    SUGGESTION = "SUGGESTION"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def sarif_level(self) -> str:
        return {"ERROR": "error", "SECURITY_WARNING": "warning", "WARNING": "warning",
                "SUGGESTION": "note"}[self.value]


_RANK = {Severity.ERROR: 0, Severity.SECURITY_WARNING: 1, Severity.WARNING: 2, Severity.SUGGESTION: 3}


@dataclass(frozen=True, slots=True)
class Finding:
    """One lint finding: a stable code, its severity, where (a JSON path) and what to do about it."""

    code: str
    severity: Severity
    path: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity.value, "path": self.path, "message": self.message,
                "fix": self.fix}

    def under(self, prefix: str) -> "Finding":
        """The same finding with its path placed under `prefix` (the document's place in a larger file)."""
        return Finding(self.code, self.severity, prefix + self.path[1:], self.message, self.fix)


# Every code, its severity and one line of what it means (docs/lint.md explains each with an example).
RULES: dict[str, tuple[Severity, str]] = {
    "UNKNOWN_ACTION": (Severity.ERROR, "The action is not an action of a service the linter has tables for."),
    "ACTION_MATCHES_NOTHING": (Severity.ERROR, "The wildcard action matches no action of its service."),
    "ACTION_NEEDS_WILDCARD_RESOURCE": (Severity.ERROR, "The action has no resource type, so only \"Resource\": "
                                                       "\"*\" matches it; the statement's ARNs never do."),
    "RESOURCE_TYPE_MISMATCH": (Severity.ERROR, "None of the statement's resources can name a resource type the "
                                               "action takes."),
    "RESOURCE_MATCHES_NO_ACTION": (Severity.WARNING, "No action of the statement takes the resource type this "
                                                     "resource names."),
    "MALFORMED_ARN": (Severity.ERROR, "The ARN pattern cannot match any ARN of its service's resource types."),
    "UNKNOWN_CONDITION_KEY": (Severity.ERROR, "The condition key is not a global key or a key of its service."),
    "CONDITION_KEY_NOT_SUPPORTED": (Severity.WARNING, "No action of the statement supports the condition key, so "
                                                      "it is never in the request."),
    "OPERATOR_TYPE_MISMATCH": (Severity.ERROR, "The condition operator does not fit the key's type."),
    "IFEXISTS_UNNECESSARY": (Severity.SUGGESTION, "The key is in every request, so IfExists changes nothing."),
    "SET_OPERATOR_ON_SINGLE_VALUED_KEY": (Severity.WARNING, "ForAllValues/ForAnyValue on a single-valued key."),
    "MISSING_SET_OPERATOR": (Severity.WARNING, "A plain operator on a multivalued key."),
    "ALLOW_WITH_NOT_ACTION": (Severity.SECURITY_WARNING, "Allow with NotAction grants every other action."),
    "ALLOW_WITH_NOT_RESOURCE": (Severity.SECURITY_WARNING, "Allow with NotResource grants every other resource."),
    "PUBLIC_PRINCIPAL_WITHOUT_CONDITION": (Severity.SECURITY_WARNING, "Principal \"*\" without a condition allows "
                                                                      "anyone, including anonymous callers."),
    "PASSROLE_ON_STAR": (Severity.SECURITY_WARNING, "iam:PassRole on every role."),
    "ASSUMEROLE_ON_STAR": (Severity.SECURITY_WARNING, "sts:AssumeRole on every role."),
    "REDUNDANT_STATEMENT": (Severity.SUGGESTION, "Another statement of the policy already says all of this one."),
    "SHADOWED_BY_DENY": (Severity.WARNING, "An unconditional Deny of the policy covers all of this Allow, so it "
                                           "never allows anything."),
}


# ------------------------------------------------------------------ the tables (data/actions.json)


@dataclass(frozen=True)
class KeyInfo:
    name: str                   # as documented; a tag key as `aws:RequestTag/${TagKey}`
    types: tuple[str, ...]      # String, ARN, Date, Numeric, Bool, IPAddress, Binary
    multivalued: bool
    always: bool                # in every request context, so IfExists is pointless


@dataclass(frozen=True)
class Service:
    prefix: str
    actions: dict[str, str]                                 # lower-case name -> documented name
    resource_types: dict[str, tuple[str, ...]] | None       # documented name -> types; None: not tabled
    action_keys: dict[str, frozenset[str]]                  # documented name -> condition keys (as _key_id)
    arn_formats: dict[str, str]                             # resource type -> ARN format
    checks_keys: bool                                       # the table lists every condition key of the prefix


@dataclass(frozen=True)
class Tables:
    services: dict[str, Service]
    keys: dict[str, KeyInfo]        # lower-case name (tag keys: `aws:requesttag/`) -> info

    def key(self, name: str) -> KeyInfo | None:
        return self.keys.get(_key_id(name))

    def key_names(self) -> list[str]:
        return [k.name for k in self.keys.values()]


def _key_id(name: str) -> str:
    """How a key is looked up: without case, and a tag key (`aws:RequestTag/team`) by its family
    (`aws:requesttag/`)."""
    lower = name.lower()
    return lower.split("/", 1)[0] + "/" if "/" in lower else lower


def parse_tables(doc: dict[str, Any]) -> Tables:
    services: dict[str, Service] = {}
    for prefix, s in doc["services"].items():
        actions = s["actions"]
        tabled = all("resourceTypes" in a for a in actions.values())
        services[prefix] = Service(
            prefix, {name.lower(): name for name in actions},
            {name: tuple(a["resourceTypes"]) for name, a in actions.items()} if tabled else None,
            {name: frozenset(_key_id(k) for k in a.get("conditionKeys", ())) for name, a in actions.items()},
            {t: r["arn"] for t, r in s.get("resourceTypes", {}).items()},
            "conditionKeys" in s)
    keys: dict[str, KeyInfo] = {}
    for name, k in doc["globalConditionKeys"].items():
        types = (k["type"],) + ((k["alsoType"],) if "alsoType" in k else ())
        keys[_key_id(name)] = KeyInfo(name, types, k["multivalued"], k["alwaysPresent"])
    return Tables(services, keys)


@lru_cache(maxsize=1)
def tables() -> Tables:
    """The shipped tables, read once."""
    text = resources.files(__package__).joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    return parse_tables(json.loads(text))


# Condition-key prefixes whose every key the tables list: any other key of these prefixes is a typo.
def _checked_prefixes(t: Tables) -> frozenset[str]:
    return frozenset({"aws", *(p for p, s in t.services.items() if s.checks_keys)})


# Operator families (conditions.OpSpec.family) that fit each key type; Null fits every key.
_FAMILIES: dict[str, frozenset[str]] = {
    "String": frozenset({"string", "string-ci", "like"}),
    # AWS recommends ARN operators for ARN keys; string operators also compare them as text.
    "ARN": frozenset({"arn", "string", "string-ci", "like"}),
    "Date": frozenset({"date"}),
    "Numeric": frozenset({"numeric"}),
    "Bool": frozenset({"bool"}),
    "IPAddress": frozenset({"ip"}),
    "Binary": frozenset({"binary"}),
}
_OPERATOR_FOR = {"String": "StringEquals or StringLike", "ARN": "ArnLike or ArnEquals",
                 "Date": "a Date operator such as DateGreaterThan", "Numeric": "a Numeric operator such as "
                 "NumericLessThan", "Bool": "Bool", "IPAddress": "IpAddress or NotIpAddress",
                 "Binary": "BinaryEquals"}


def _display(key: str) -> str:
    """A key as suggested: a tag key by its family, `aws:RequestTag/`."""
    return key.split("/", 1)[0] + "/" if "/" in key else key


def _closest(name: str, choices: list[str]) -> str | None:
    """The closest documented name, compared without case (IAM compares actions and keys without case)."""
    by_lower = {c.lower(): c for c in choices}
    hit = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=SUGGEST_CUTOFF)
    return by_lower[hit[0]] if hit else None


# ------------------------------------------------------------------ the linter


def lint_document(doc: Any, policy_type: PolicyType | str, *, data: Tables | None = None) -> list[Finding]:
    """Findings for a document that validated (validate.validate_document's `report.document`).

    Paths are the validator's (`$.Statement[0].Action[1]`). Actions, keys and ARNs of services without a
    table are never reported as unknown."""
    ptype = policy_type if isinstance(policy_type, PolicyType) else PolicyType.parse(policy_type)
    if not isinstance(doc, dict):
        return []
    t = data or tables()
    policy = compile_policy(doc, "")
    raw = doc.get("Statement")
    raws: list[Any] = raw if isinstance(raw, list) else [raw]
    entries: list[_Entry] = []
    for s in policy.statements:
        path = "$.Statement" if isinstance(raw, dict) else child_path("$.Statement", s.index)
        entries.append(_Entry(s, raws[s.index], path))
    findings: list[Finding] = []
    for e in entries:
        findings.extend(_statement_findings(e, ptype, t))
    findings.extend(_overlap_findings(entries))
    return findings


@dataclass(frozen=True)
class _Entry:
    stmt: Statement
    raw: dict[str, Any]
    path: str

    def element_paths(self, member: str) -> list[str]:
        """The path of each entry of a string-or-array member, in order."""
        value = self.raw.get(member)
        base = child_path(self.path, member)
        return [child_path(base, i) for i in range(len(value))] if isinstance(value, list) else [base]


def _statement_findings(e: _Entry, ptype: PolicyType, t: Tables) -> Iterator[Finding]:
    s = e.stmt
    if not s.effect_valid:
        return
    action_member = "NotAction" if s.not_action else "Action"
    action_paths = e.element_paths(action_member)
    covered: list[tuple[str, ActionPattern, Service | None, list[str]]] = []   # path, pattern, service, actions
    for path, ap in zip(action_paths, s.actions):
        service = t.services.get(ap.service) if ap.valid and not ap.any else None
        names = _known_actions(path, ap, service)
        if isinstance(names, Finding):
            yield names
            continue
        covered.append((path, ap, service, names))
    if s.allow and s.not_action:
        yield _finding("ALLOW_WITH_NOT_ACTION", child_path(e.path, "NotAction"),
                       "Allow with NotAction allows every action not listed, of every service, on the statement's "
                       "resources", 'list the actions to allow in "Action" instead')
    if s.allow and s.not_resource:
        yield _finding("ALLOW_WITH_NOT_RESOURCE", child_path(e.path, "NotResource"),
                       "Allow with NotResource allows the actions on every resource not listed, in every account",
                       'list the resources to allow in "Resource" instead')
    resource_member = "NotResource" if s.not_resource else "Resource"
    resource_paths = e.element_paths(resource_member) if s.resources is not None else []
    for path, r in zip(resource_paths, s.resources or ()):
        yield from _arn_findings(path, r.source, t)
    if s.resources is not None and not s.not_resource and not s.not_action:
        yield from _resource_type_findings(s, covered, resource_paths, t)
    if not s.not_action:
        yield from _star_grants(e, covered)
    yield from _principal_findings(e, ptype)
    yield from _condition_findings(e, covered, t)


def _finding(code: str, path: str, message: str, fix: str) -> Finding:
    return Finding(code, RULES[code][0], path, message, fix)


def _known_actions(path: str, ap: ActionPattern, service: Service | None) -> list[str] | Finding:
    """The documented actions an Action entry names ([] when the service has no table), or the finding that it
    names none."""
    if service is None:
        return []
    names = list(service.actions.values())
    if ap.literal is not None:
        name = ap.literal.partition(":")[2]
        if name in service.actions:
            return [service.actions[name]]
        close = _closest(name, names)
        hint = f'write "{service.prefix}:{close}"' if close else f"use one of the {service.prefix} actions listed " \
                                                                  "in docs/lint.md"
        return _finding("UNKNOWN_ACTION", path, f'"{ap.source}" is not a {service.prefix} action, so it matches '
                                                "nothing" + (f' (did you mean "{service.prefix}:{close}"?)'
                                                             if close else ""), hint)
    assert ap.glob is not None
    hits = [n for n in names if ap.glob.match(n.lower())]
    if hits:
        return hits
    return _finding("ACTION_MATCHES_NOTHING", path, f'"{ap.source}" matches no {service.prefix} action',
                    f'correct the pattern (e.g. "{service.prefix}:Get*") or name the actions literally')


# ------------------------------------------------------------------ resources


def _arn_parts(source: str) -> tuple[str, str, str, str] | None:
    """(service, region, account, resource segment) of a six-field ARN pattern, or None for `*` and short forms."""
    f = split_arn(source)
    if f is None:
        return None
    _, _partition, service, region, account, segment = f
    return service.lower(), region, account, segment


def _wild(text: str) -> bool:
    return "*" in text or "?" in text or "${" in text


def _literal_prefix(text: str) -> str:
    cut = [i for i in (text.find("*"), text.find("?"), text.find("${")) if i >= 0]
    return text[:min(cut)] if cut else text


def _literal_suffix(text: str) -> str:
    ends = [text.rfind("*") + 1, text.rfind("?") + 1, text.rfind("}") + 1 if "${" in text else 0]
    return text[max(ends):]


_ARN_FIELD = {"${Partition}": r"[a-z-]+", "${Region}": r"[a-z0-9-]+", "${Account}": r"[0-9]{12}",
              "${CreationTime}": r"[0-9]+"}
_NAME = r"[A-Za-z0-9_.-]{1,256}"
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]*", re.ASCII)
_DIGITS = re.compile(r"[0-9]*", re.ASCII)
_REGION = re.compile(r"[a-z0-9-]+", re.ASCII)
_ACCOUNT = re.compile(r"[0-9]{12}", re.ASCII)


def _format_regex(arn_format: str) -> re.Pattern[str]:
    """The regular expression of a resource segment from an ARN format of the tables."""
    fields = split_arn(arn_format)
    if fields is None:
        raise ValueError(f"data/actions.json: the resource ARN format {arn_format!r} is not an ARN; fix the table")
    segment = fields[RESOURCE]
    out = ""
    for piece in re.split(r"(\$\{[A-Za-z]+\})", segment):
        out += _ARN_FIELD.get(piece, _NAME) if piece.startswith("${") else re.escape(piece)
    return re.compile(out, re.ASCII)


def _segment_possible(segment: str, rtype: str, arn_format: str) -> bool:
    """Can the resource segment pattern match some ARN of this type (TYPE/NAME/CREATIONTIME)?

    Exact for literal segments; with wildcards or variables a necessary test: the literal text before the first
    wildcard must start such an ARN and the text after the last must end one (which ends with digits)."""
    if not _wild(segment):
        return _format_regex(arn_format).fullmatch(segment) is not None
    head = _literal_prefix(segment).split("/")
    if len(head) > 3:
        return False
    if len(head) == 1:
        if not (rtype + "/").startswith(head[0]):
            return False
    elif head[0] != rtype or not _NAME_CHARS.fullmatch(head[1]) or (len(head) == 3 and not
                                                                      _DIGITS.fullmatch(head[2])):
        return False
    tail = _literal_suffix(segment).split("/")
    return (len(tail) <= 3 and _DIGITS.fullmatch(tail[-1]) is not None
            and all(_NAME_CHARS.fullmatch(p) for p in tail[:-1]))


def _types_named(source: str, service: Service) -> set[str]:
    """The resource types of `service` a Resource entry can name (all of them for `*` and short forms)."""
    parts = _arn_parts(source)
    if parts is None:
        return set(service.arn_formats)
    svc, _, _, segment = parts
    if _wild(svc):
        return set(service.arn_formats)
    if svc != service.prefix:
        return set()
    prefix = _literal_prefix(segment)
    return {rt for rt in service.arn_formats if prefix.startswith(rt + "/") or (rt + "/").startswith(prefix)}


def _arn_findings(path: str, source: str, t: Tables) -> Iterator[Finding]:
    parts = _arn_parts(source)
    if parts is None:
        return
    svc, region, account, segment = parts
    service = t.services.get(svc)
    if service is None or not service.arn_formats:
        return
    named = segment.split("/", 1)[0]
    shape = _example_arn(service, named if named in service.arn_formats else next(iter(service.arn_formats)))
    problem = ""
    if not _wild(region) and not _REGION.fullmatch(region):
        problem = f"its region {json.dumps(region)} is not a region ({svc} ARNs always name one)"
    elif not _wild(account) and not _ACCOUNT.fullmatch(account):
        problem = f"its account {json.dumps(account)} is not a 12-digit account id"
    else:
        rtype = segment.split("/", 1)[0]
        if not _wild(rtype) and rtype not in service.arn_formats:
            problem = f"{json.dumps(rtype)} is not a {svc} resource type ({', '.join(service.arn_formats)})"
        elif not any(_segment_possible(segment, rt, f) for rt, f in service.arn_formats.items()):
            problem = f"its resource part {json.dumps(segment)} cannot match TYPE/NAME/CREATION-TIME"
    if problem:
        yield _finding("MALFORMED_ARN", path, f"{json.dumps(source)} matches no {svc} resource: {problem}",
                       f"write the ARN as {shape} (the name, then the creation time or a wildcard for it)")


def _resource_type_findings(s: Statement, covered: list[tuple[str, ActionPattern, Service | None, list[str]]],
                            resource_paths: list[str], t: Tables) -> Iterator[Finding]:
    resources = s.resources or ()
    used: set[int] = set()
    flagged = False     # an action is already reported: its resources are not reported again
    checked_all = bool(covered) and len(covered) == len(s.actions)
    for path, ap, service, names in covered:
        if service is None or service.resource_types is None or not names:
            checked_all = False
            continue
        usable_by: list[bool] = []
        for name in names:
            wanted = set(service.resource_types[name]) or {"*"}
            ok = False
            for i, r in enumerate(resources):
                if r.any or wanted & _types_named(r.source, service):
                    used.add(i)
                    ok = True
            usable_by.append(ok)
        if any(usable_by):
            continue
        flagged = True
        typeless = all(not service.resource_types[n] for n in names)
        what = f'"{ap.source}"' + (f" ({len(names)} actions)" if len(names) > 1 else "")
        if typeless:
            yield _finding("ACTION_NEEDS_WILDCARD_RESOURCE", path,
                           f"{what} has no resource type: its requests are for resource \"*\", which no ARN in "
                           "this statement matches, so the statement never applies to it",
                           f'move "{ap.source}" to a statement with "Resource": "*"')
        else:
            types = sorted({rt for n in names for rt in service.resource_types[n]})
            yield _finding("RESOURCE_TYPE_MISMATCH", path,
                           f"{what} takes a {' or '.join(types)} resource, and no resource of this statement "
                           "names one, so the statement never applies to it",
                           f"add a resource such as {_example_arn(service, types[0])}, or move the action to a "
                           "statement about that resource type")
    if not checked_all or flagged:
        return
    for i, (path, r) in enumerate(zip(resource_paths, resources)):
        if i in used or r.any:
            continue
        parts = _arn_parts(r.source)
        if parts is None or parts[0] not in t.services:
            continue
        yield _finding("RESOURCE_MATCHES_NO_ACTION", path,
                       f"{json.dumps(r.source)} names a resource type that no action of this statement takes",
                       "remove it, or add the actions meant for it")


def _example_arn(service: Service, rtype: str) -> str:
    f = service.arn_formats.get(rtype, "")
    return (f.replace("${Partition}", "aws").replace("${Region}", "REGION").replace("${Account}", "ACCOUNT")
            .split("/${", 1)[0] + "/NAME/*")


# ------------------------------------------------------------------ security


def _star_grants(e: _Entry, covered: list[tuple[str, ActionPattern, Service | None, list[str]]]) -> Iterator[Finding]:
    s = e.stmt
    if not s.allow or s.resources is None or s.not_resource or not any(r.any for r in s.resources):
        return
    for path, ap, _, _ in covered:
        if ap.any or not ap.valid:
            continue   # "*" on "*" is plain administrator access; PassRole is one of very many things it grants
        if ap.service == "iam" and ap.matches("iam:passrole"):
            yield _finding("PASSROLE_ON_STAR", path,
                           f'"{ap.source}" with "Resource": "*" lets the caller pass any role, with all its '
                           "permissions, to a service", "list the role ARNs the caller may pass (and add an "
                                                        "iam:PassedToService condition)")
        if ap.service == "sts" and ap.matches("sts:assumerole"):
            yield _finding("ASSUMEROLE_ON_STAR", path,
                           f'"{ap.source}" with "Resource": "*" lets the caller assume any role that trusts its '
                           "account", "list the role ARNs the caller may assume")


def _is_public(principal: Any) -> bool:
    if principal == "*":
        return True
    if isinstance(principal, dict):
        aws = principal.get("AWS")
        return aws == "*" or (isinstance(aws, list) and "*" in aws)
    return False


def _principal_findings(e: _Entry, ptype: PolicyType) -> Iterator[Finding]:
    if ptype not in (PolicyType.RESOURCE, PolicyType.TRUST) or not e.stmt.allow:
        return
    if "Principal" in e.raw and _is_public(e.raw["Principal"]) and not e.raw.get("Condition"):
        where = "role" if ptype is PolicyType.TRUST else "resource"
        yield _finding("PUBLIC_PRINCIPAL_WITHOUT_CONDITION", child_path(e.path, "Principal"),
                       f'"Principal": "*" without a condition allows anyone, in any account and anonymous callers '
                       f"too, to use this {where}", 'name the principals, or add a condition such as '
                                                    '"StringEquals": {"aws:PrincipalOrgID": "o-..."}')


# ------------------------------------------------------------------ conditions


def _condition_findings(e: _Entry, covered: list[tuple[str, ActionPattern, Service | None, list[str]]],
                        t: Tables) -> Iterator[Finding]:
    cond = e.raw.get("Condition")
    if not isinstance(cond, dict):
        return
    checked = _checked_prefixes(t)
    cpath = child_path(e.path, "Condition")
    for op_name, block in cond.items():
        op = parse_operator(op_name)
        if op is None or not isinstance(block, dict):
            continue
        opath = child_path(cpath, op_name)
        for key in block:
            yield from _key_findings(child_path(opath, key), op, key, e.stmt, covered, t, checked)


def _key_findings(path: str, op: OperatorName, key: str, s: Statement,
                  covered: list[tuple[str, ActionPattern, Service | None, list[str]]], t: Tables,
                  checked: frozenset[str]) -> Iterator[Finding]:
    info = t.key(key)
    prefix = key.partition(":")[0].lower()
    if info is None:
        if prefix in checked:
            names = t.key_names() if prefix == "aws" else []
            close = _closest(_display(key), [_display(n) for n in names])
            fix = f'write "{close}"' if close else "use a documented key (docs/lint.md lists them)"
            if close and close.endswith("/"):
                fix = f'write "{close}TAG-KEY"'
            yield _finding("UNKNOWN_CONDITION_KEY", path,
                           f"{key} is not a {'global' if prefix == 'aws' else prefix} condition key, so it is never "
                           "in the request" + (f' (did you mean "{close}"?)' if close else ""), fix)
        return
    family = op.spec.family
    if family != "null" and not any(family in _FAMILIES.get(ty, frozenset()) for ty in info.types):
        yield _finding("OPERATOR_TYPE_MISMATCH", path,
                       f"{op.base} compares {family.replace('-ci', '')} values, but {key} is of type "
                       f"{' or '.join(info.types)}", f"use {_OPERATOR_FOR[info.types[0]]}")
    if op.if_exists and info.always:
        yield _finding("IFEXISTS_UNNECESSARY", path, f"{key} is in every request, so IfExists changes nothing",
                       f"write {op.name.replace('IfExists', '')}")
    if family != "null" and op.qualifier is not None and not info.multivalued:
        absent = ", and matches when the key is absent" if op.qualifier == "ForAllValues" else ""
        yield _finding("SET_OPERATOR_ON_SINGLE_VALUED_KEY", path,
                       f"{op.qualifier} on the single-valued key {key} treats its value as a set of one{absent}",
                       f"write {op.base}{'IfExists' if op.if_exists else ''}")
    if family != "null" and op.qualifier is None and info.multivalued:
        yield _finding("MISSING_SET_OPERATOR", path,
                       f"{op.name} on the multivalued key {key} does not match a request with two or more "
                       "values", f"write ForAnyValue:{op.name} or ForAllValues:{op.name} (with a Null check)")
    yield from _key_support(path, key, s, covered)


_REQUEST_SCOPED = ("aws:requesttag/", "aws:tagkeys", "aws:resourcetag/")


def _key_support(path: str, key: str, s: Statement,
                 covered: list[tuple[str, ActionPattern, Service | None, list[str]]]) -> Iterator[Finding]:
    """A tag key that no action of the statement has: the condition is then never true for them."""
    lower = key.lower()
    kid = _key_id(key)
    if not lower.startswith(_REQUEST_SCOPED) or s.not_action or len(covered) != len(s.actions) or not covered:
        return
    for _, _, service, names in covered:
        if service is None or service.resource_types is None or not names:
            return
        for n in names:
            keys = {_key_id(k) for k in service.action_keys[n]}
            if kid in keys or (kid == "aws:resourcetag/" and service.resource_types[n]):
                return
    yield _finding("CONDITION_KEY_NOT_SUPPORTED", path,
                   f"no action of this statement has {key} in its request (only "
                   f"{'actions on a tagged resource' if kid == 'aws:resourcetag/' else 'create and tag actions'} "
                   "do)", "remove the condition, or move it to a statement with the actions that support it")


# ------------------------------------------------------------------ redundant and shadowed statements


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _action_covers(a: ActionPattern, b: ActionPattern) -> bool:
    """Every action `b` matches, `a` matches too (a sound test: `b`'s wildcards are read as text)."""
    if a.any:
        return True
    if b.any or not a.valid or not b.valid or a.service != b.service:
        return False
    name = b.source.lower().partition(":")[2]
    if a.literal is not None:
        return a.literal == f"{b.service}:{name}"
    assert a.glob is not None
    return a.glob.match(name)


def _resource_covers(a: ResourcePattern, b: ResourcePattern) -> bool:
    if a.any or a.source == b.source:
        return True
    if b.any or b.variable_names or a.static is None or not a.static.valid:
        return False
    f = split_arn(b.source)
    if f is None:
        return False
    return a.static.match_text(":".join(lower_head(f)))


def _covers(a: _Entry, b: _Entry, *, same_condition: bool) -> bool:
    sa, sb = a.stmt, b.stmt
    if sa.not_action or sb.not_action or sa.not_resource or sb.not_resource or sa.broken or sb.broken:
        return False
    if not all(any(_action_covers(x, y) for x in sa.actions) for y in sb.actions):
        return False
    if (sa.resources is None) != (sb.resources is None):
        return False
    if sa.resources is not None and not all(any(_resource_covers(x, y) for x in sa.resources)
                                            for y in sb.resources or ()):
        return False
    if a.raw.get("Condition"):
        if not same_condition or _canon(a.raw.get("Condition")) != _canon(b.raw.get("Condition")):
            return False
    for member in ("Principal", "NotPrincipal"):
        if _canon(a.raw.get(member)) != _canon(b.raw.get(member)):
            if not (member == "Principal" and _is_public(a.raw.get(member)) and not same_condition
                    and "NotPrincipal" not in b.raw):
                return False
    return True


def _overlap_findings(entries: list[_Entry]) -> Iterator[Finding]:
    for j, b in enumerate(entries):
        if not b.stmt.effect_valid:
            continue
        for i, a in enumerate(entries):
            if i == j or not a.stmt.effect_valid:
                continue
            if a.stmt.allow == b.stmt.allow and _covers(a, b, same_condition=True):
                # Two identical statements cover each other: report only the later one.
                if i > j and _covers(b, a, same_condition=True):
                    continue
                what = "allows" if b.stmt.allow else "denies"
                yield _finding("REDUNDANT_STATEMENT", b.path,
                               f"this statement {what} nothing that {_name(a)} does not already {what[:-1]}",
                               f"remove it, or merge it into {_name(a)}")
                break
            if not a.stmt.allow and b.stmt.allow and not a.raw.get("Condition") and _covers(a, b, same_condition=False):
                yield _finding("SHADOWED_BY_DENY", b.path,
                               f"{_name(a)} denies, without a condition, every request this Allow matches, so it "
                               "never allows anything", f"narrow {_name(a)} or remove this statement")
                break


def _name(e: _Entry) -> str:
    return e.path[2:] + (f' (Sid "{e.stmt.sid}")' if e.stmt.sid else "")


# ------------------------------------------------------------------ positions (for SARIF)


_WS = re.compile(r"[ \t\n\r]*")
# json's string scanner (the C one when built): returns the decoded string and the offset after it.
_scanstring: Any = getattr(json.decoder, "scanstring")
_SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null")
_LAST_STEP = re.compile(r'(?:\[[0-9]+\]|\["(?:[^"\\]|\\.)*"\]|\.[A-Za-z_][A-Za-z0-9_]*)$')


def json_positions(text: str) -> dict[str, tuple[int, int]]:
    """(line, column), both from 1, of every JSON path of a document that parsed: a member's name, an array
    element's value. The parser keeps no positions, so this is a second, position-only pass over the text."""
    offsets: dict[str, int] = {}
    start = 1 if text.startswith("\ufeff") else 0

    def skip(i: int) -> int:
        m = _WS.match(text, i)
        return m.end() if m else i

    def value(i: int, path: str) -> int:
        i = skip(i)
        offsets.setdefault(path, i)
        c = text[i]
        if c == "{" or c == "[":
            close = "}" if c == "{" else "]"
            i = skip(i + 1)
            index = 0
            while text[i] != close:
                if c == "{":
                    key_at = i
                    key, i = _scanstring(text, i + 1)
                    p = child_path(path, key)
                    offsets[p] = key_at
                    i = value(skip(i) + 1, p)
                else:
                    i = value(i, child_path(path, index))
                    index += 1
                i = skip(i)
                if text[i] == ",":
                    i = skip(i + 1)
            return i + 1
        if c == '"':
            return _scanstring(text, i + 1)[1]
        m = _SCALAR.match(text, i)
        if m is None:
            raise ValueError(f"not JSON at offset {i}")
        return m.end()

    try:
        value(start, "$")
    except (ValueError, IndexError, RecursionError):
        pass    # positions found so far stay; the rest fall back to an enclosing path
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    out: dict[str, tuple[int, int]] = {}
    for path, off in offsets.items():
        n = bisect.bisect_right(line_starts, off)
        out[path] = (n, off - line_starts[n - 1] + 1)
    return out


def yaml_positions(text: str) -> dict[str, tuple[int, int]]:
    """(line, column) of every path of a YAML document, from the composed node tree."""
    import yaml
    out: dict[str, tuple[int, int]] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out
    stack: list[tuple[Any, str]] = [(root, "$")] if root is not None else []
    while stack:
        node, path = stack.pop()
        out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    p = child_path(path, str(k.value))
                    out[p] = (k.start_mark.line + 1, k.start_mark.column + 1)
                    stack.append((v, p))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                stack.append((v, child_path(path, i)))
    return out


def locate(positions: dict[str, tuple[int, int]], path: str) -> tuple[int, int]:
    """The position of `path`, or of the nearest enclosing path that has one ((1, 1) when none does)."""
    while path not in positions:
        m = _LAST_STEP.search(path)
        if m is None or m.start() == 0:
            return positions.get("$", (1, 1))
        path = path[:m.start()]
    return positions[path]


# ------------------------------------------------------------------ SARIF


def sarif_log(results: Sequence[tuple[str, Finding, tuple[int, int]]], tool_version: str,
              invalid: Sequence[tuple[str, str, str, tuple[int, int]]] = ()) -> dict[str, Any]:
    """A SARIF 2.1.0 log: `results` are (file uri, finding, (line, column)); `invalid` are validation errors
    (file uri, path, message, (line, column)), reported under the rule INVALID_POLICY."""
    rules = [{"id": "INVALID_POLICY", "shortDescription": {"text": "The policy is not valid (IAM refuses it)."},
              "defaultConfiguration": {"level": "error"}, "properties": {"severity": "ERROR"}}]
    rules += [{"id": code, "shortDescription": {"text": text},
               "defaultConfiguration": {"level": sev.sarif_level}, "properties": {"severity": sev.value}}
              for code, (sev, text) in RULES.items()]
    out: list[dict[str, Any]] = []

    def location(uri: str, path: str, pos: tuple[int, int]) -> dict[str, Any]:
        return {"physicalLocation": {"artifactLocation": {"uri": uri},
                                     "region": {"startLine": pos[0], "startColumn": pos[1]}},
                "logicalLocations": [{"fullyQualifiedName": path, "kind": "member"}]}

    for uri, path, message, pos in invalid:
        out.append({"ruleId": "INVALID_POLICY", "level": "error", "message": {"text": f"{path}: {message}"},
                    "locations": [location(uri, path, pos)]})
    for uri, f, pos in results:
        out.append({"ruleId": f.code, "level": f.severity.sarif_level,
                    "message": {"text": f"{f.path}: {f.message}. Fix: {f.fix}."},
                    "locations": [location(uri, f.path, pos)], "properties": {"severity": f.severity.value}})
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION,
            "runs": [{"tool": {"driver": {"name": "authz validate", "version": tool_version, "rules": rules}},
                      "results": out}]}
