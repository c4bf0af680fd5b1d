"""Validation of policy documents against AWS's rules: grammar, per-type elements, values, quotas and warnings."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

from . import limits
from .arn import ACCOUNT, ARN_FIELDS, PARTITION, REGION, RESOURCE, SERVICE, compile_arn_like, split_arn
from .conditions import (BASE_OPERATORS, MULTIVALUED_KEYS, QUALIFIERS, OperatorName, parse_base64, parse_date,
                         parse_ip_network, parse_number, parse_operator, value_text)
from .errors import PolicyError, Problem
from .glob import Glob, tokens_of
from .jsontext import child_path, kind_of, load_text, plain
from .model import VERSION_2008, VERSION_2012, Policy, PolicyType, compile_policy
from .variables import Part, Special, Var, parse_parts

__all__ = ["ValidationReport", "ValidatorOptions", "validate_document", "parse_policy"]


@dataclass(frozen=True)
class ValidationReport:
    """Every error and warning found in one document, plus the parsed document when it parsed."""

    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    document: Any | None

    @property
    def valid(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class ValidatorOptions:
    require_version_2012: bool = False      # spec 1.2: "require 2012-10-17 on create" is [UNC], so off by default
    size_kind: str | None = None            # a key of limits.SIZE_LIMITS overriding the policy type's default


def validate_document(source: str | bytes | Mapping[str, Any], policy_type: PolicyType | str, *,
                      options: ValidatorOptions = ValidatorOptions()) -> ValidationReport:
    """Check a policy document against spec 1.11 (with the per-type rules of 1.10 and the quotas of 8).

    A Mapping is serialised compactly first, so that it goes through exactly the same text rules
    (character set, size) as a document received as text.
    """
    ptype = policy_type if isinstance(policy_type, PolicyType) else PolicyType.parse(policy_type)
    size_kind = options.size_kind or ptype.value
    if size_kind not in limits.SIZE_LIMITS:
        raise ValueError(f"unknown size_kind {size_kind!r}; use one of {', '.join(limits.SIZE_LIMITS)}")
    if isinstance(source, Mapping):
        try:
            text = json.dumps(dict(source), separators=(",", ":"), ensure_ascii=False, default=_mapping_as_dict)
        except (TypeError, ValueError, RecursionError) as exc:   # RecursionError: nested too deeply
            return ValidationReport((Problem("$", f"the document cannot be written as JSON ({exc}); use only "
                                                  "objects, arrays, strings, numbers, booleans and null"),), (), None)
    elif isinstance(source, (bytes, bytearray)):
        try:
            text = bytes(source).decode("utf-8")
        except UnicodeDecodeError:
            _, problems = load_text(bytes(source))  # it names the offending byte
            return ValidationReport(_with_hints(problems), (), None)
    else:
        text = source
    value, loader_problems = load_text(text, iam_charset=_RULES[ptype].iam_charset)
    errors = list(_with_hints(loader_problems))
    if value is None:
        return ValidationReport(tuple(errors), (), None)
    checker = _Checker(ptype, options)
    checker.document(value)
    errors.extend(checker.errors)
    errors.extend(_size_problems(value, text, size_kind))
    return ValidationReport(tuple(errors), tuple(checker.warnings), plain(value))


def parse_policy(source: str | bytes | Mapping[str, Any], policy_type: PolicyType | str, name: str = "", *,
                 options: ValidatorOptions = ValidatorOptions()) -> Policy:
    """Validate, then compile; raises PolicyError listing every error when the document is invalid."""
    report = validate_document(source, policy_type, options=options)
    if not report.valid:
        raise PolicyError(report.errors, name)
    return compile_policy(report.document, name)


# ------------------------------------------------------------------ per-type rules (spec 1.10)


@dataclass(frozen=True)
class _TypeRules:
    label: str
    principal: str               # forbidden | either (Principal or NotPrincipal) | principal (Principal only) | star
    resource: bool = True        # False: Resource/NotResource forbidden (trust policies: the role is the resource)
    iam_sid: bool = True         # Sid limited to [A-Za-z0-9]
    warn_id: bool = False        # the grammar does not allow Id here, yet AWS accepts it in practice [UNC] -> warning
    iam_charset: bool = True     # spec 1.1 rule 4 asks for a per-type setting; every type we know uses IAM's
    deny_only: bool = False      # custom RCPs may only Deny


_RULES: dict[PolicyType, _TypeRules] = {
    PolicyType.IDENTITY: _TypeRules("identity-based policies", "forbidden", warn_id=True),
    PolicyType.BOUNDARY: _TypeRules("permissions boundaries", "forbidden", warn_id=True),
    PolicyType.SESSION: _TypeRules("session policies", "forbidden", warn_id=True),
    # Other services' resource policies may allow richer Sids (spec 1.4), so only uniqueness applies there.
    PolicyType.RESOURCE: _TypeRules("resource-based policies", "either", iam_sid=False),
    PolicyType.TRUST: _TypeRules("role trust policies", "principal", resource=False),
    PolicyType.SCP: _TypeRules("service control policies", "forbidden"),
    PolicyType.RCP: _TypeRules("resource control policies", "star", deny_only=True),
}

_TOP_MEMBERS = ("Version", "Id", "Statement")
_STATEMENT_MEMBERS = ("Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Principal",
                      "NotPrincipal", "Condition")
_PRINCIPAL_KEYS = ("AWS", "Service", "Federated", "CanonicalUser")
_PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
# Services whose resource segment starts with a resource type (`stream/...`, `user/...`); the type may not be
# wildcarded (spec 1.6). S3-style services are absent on purpose: there the first segment is a bucket name.
_TYPED_RESOURCE_SERVICES = frozenset({"kinesisvideo", "iam", "sts"})

_KNOWN_RESOURCE_TYPES = {"kinesisvideo": ("stream", "channel")}   # spec 7.1

# Grammars: always matched whole with fullmatch (a `$` also accepts a trailing newline) and ASCII
# only (re.ASCII: without it `\d` takes other scripts' digits and IGNORECASE folds the Kelvin sign to k).
_SID = re.compile(r"[A-Za-z0-9]*", re.ASCII)
_SERVICE_PREFIX = re.compile(r"[A-Za-z0-9.-]+", re.ASCII)
_ACCOUNT_ID = re.compile(r"[0-9]{12}", re.ASCII)
_UNIQUE_ID = re.compile(r"(AIDA|AROA)[A-Z0-9]{8,124}", re.ASCII)
_SERVICE_PRINCIPAL = re.compile(r"[a-z0-9][a-z0-9.-]*\.amazonaws\.com(\.cn)?", re.IGNORECASE | re.ASCII)
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*\.[A-Za-z]{2,}(/[\x21-\x7e]*)?", re.ASCII)
_CANONICAL_USER = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_ARN_RESOURCE = re.compile(r"[\x21-\x7e]+", re.ASCII)     # the name part of an IAM or STS ARN
_BAD_ACTION_CHARS = " \t\r\n,"

_ALL_OPERATOR_NAMES = tuple(f"{q}{b}{s}" for q in ("", *(f"{x}:" for x in QUALIFIERS)) for b in BASE_OPERATORS
                            for s in ("", "IfExists") if not (b == "Null" and s))

_EXAMPLE_ACTION = '"kinesisvideo:GetMedia"'
_EXAMPLE_ARN = '"arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/*"'

# The loader says what is wrong; the validator adds how to fix it (every message names a remedy).
_LOADER_HINTS = (
    ("appears more than once", "; keep exactly one (a repeated member is an error, never 'last wins'; "
                               "put all keys of one condition operator under a single operator)"),
    ("outside the IAM character set", "; replace it with a character in that range"),
    ("malformed JSON", "; fix the JSON syntax (double-quoted names and strings, no trailing commas)"),
    ("nesting is deeper", "; flatten the document"),
    ("not valid UTF-8", "; send the document UTF-8 encoded"),
    ("the limit is", "; shorten the document"),
    ("larger than", "; shorten the document"),
)


def _with_hints(problems: list[Problem]) -> tuple[Problem, ...]:
    out: list[Problem] = []
    for p in problems:
        hint = next((h for needle, h in _LOADER_HINTS if needle in p.message), "")
        out.append(Problem(p.path, p.message + hint))
    return tuple(out)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


_kind = kind_of


def _suggest(name: str, choices: tuple[str, ...]) -> str:
    """A `; did you mean "X"?` hint for a misspelt name, preferring a pure case mistake over a spelling guess."""
    for c in choices:
        if c.lower() == name.lower():
            return f'; names are case-sensitive: write "{c}"'
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def _mapping_as_dict(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not a JSON value")


def _size_problems(value: Any, text: str, size_kind: str) -> list[Problem]:
    limit, whitespace_counts = limits.SIZE_LIMITS[size_kind]
    if whitespace_counts:
        # Organizations counts every character of the text as written (spec 8).
        n = len(text)
        if n > limit:
            return [Problem("$", f"the policy text has {n} characters and every character counts for {size_kind} "
                                 f"policies (white space included); the limit is {limit}: remove white space "
                                 "outside strings or shorten the policy")]
        return []
    # IAM excludes white space; compact re-serialisation also keeps white space inside strings (the stricter
    # reading of an unstated rule, spec 8 [UNC]).
    n = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    if n > limit:
        return [Problem("$", f"the policy has {n} characters not counting white space; the limit for {size_kind} "
                             f"policies is {limit}: combine entries with wildcards or split it into several "
                             "policies")]
    return []


def _split_fields(parts: tuple[Part, ...]) -> list[list[Part]]:
    """ARN fields of a part list, splitting literal text at its first five colons; a variable is never split
    (so `${aws:PrincipalTag/svc}` in the service segment stays one part of that segment)."""
    fields: list[list[Part]] = [[]]
    for p in parts:
        if isinstance(p, str) and len(fields) < ARN_FIELDS:
            pieces = p.split(":", ARN_FIELDS - len(fields))
            if pieces[0]:
                fields[-1].append(pieces[0])
            for piece in pieces[1:]:
                fields.append([piece] if piece else [])
        else:
            fields[-1].append(p)
    return fields


def _literal(field: list[Part]) -> str | None:
    """The field's text when it has no variables or special characters, else None."""
    if all(isinstance(p, str) for p in field):
        return "".join(p for p in field if isinstance(p, str))
    return None


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


# ------------------------------------------------------------------ the checker


class _Checker:
    """Walks one parsed document and collects errors and warnings; never stops at the first problem."""

    def __init__(self, ptype: PolicyType, options: ValidatorOptions) -> None:
        self.ptype = ptype
        self.rules = _RULES[ptype]
        self.options = options
        self.variables = False
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(Problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message))

    # -------------------------------------------------------------- document level

    def document(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            self.error("$", f'the document must be a JSON object such as {{"Version": "2012-10-17", "Statement": '
                            f'[...]}}; got {_kind(doc)}')
            return
        for name in doc:
            if name not in _TOP_MEMBERS:
                self.error(child_path("$", name), f"unknown top-level member {_show(name)}; only Version, Id and "
                                                  f"Statement are allowed{_suggest(name, _TOP_MEMBERS)}")
        self.version(doc)
        if "Id" in doc:
            if not isinstance(doc["Id"], str):
                self.error("$.Id", f'Id must be a string such as "cam-01-policy"; got {_kind(doc["Id"])}')
            elif self.rules.warn_id:
                self.warn("$.Id", f"the policy grammar does not allow Id in {self.rules.label}; remove it "
                                  "(it has no effect on evaluation)")
        if "Statement" not in doc:
            self.error("$", 'the document has no Statement; add "Statement": [{"Effect": ..., "Action": ..., '
                            '...}]')
            return
        self.statements(doc["Statement"])

    def version(self, doc: dict[str, Any]) -> None:
        v = doc.get("Version")
        if "Version" not in doc:
            if self.options.require_version_2012:
                self.error("$", f'Version is required; add "Version": "{VERSION_2012}"')
            return
        if v not in (VERSION_2012, VERSION_2008):
            self.error("$.Version", f'Version must be the string "{VERSION_2012}" (or the legacy "{VERSION_2008}"); '
                                    f"got {_show(v)}")
            return
        if v == VERSION_2008 and self.options.require_version_2012:
            self.error("$.Version", f'new policies must use Version "{VERSION_2012}"; got "{VERSION_2008}"')
        self.variables = v == VERSION_2012

    def statements(self, raw: Any) -> None:
        if isinstance(raw, dict):
            items: list[tuple[str, Any]] = [("$.Statement", raw)]
        elif isinstance(raw, list):
            if not raw:
                self.error("$.Statement", "Statement must not be an empty array; add at least one statement "
                                          '{"Effect": ..., "Action": ..., "Resource": ...}')
                return
            if len(raw) > limits.MAX_STATEMENTS:
                self.error("$.Statement", f"Statement has {len(raw)} statements; the limit is "
                                          f"{limits.MAX_STATEMENTS}: merge statements or split the policy")
            items = [(child_path("$.Statement", i), s) for i, s in enumerate(raw)]
        else:
            self.error("$.Statement", f"Statement must be a statement object or an array of them; got {_kind(raw)}")
            return
        sids: dict[str, str] = {}
        for path, s in items:
            if not isinstance(s, dict):
                self.error(path, f'each statement must be an object {{"Effect": ..., "Action": ..., ...}}; '
                                 f"got {_kind(s)}")
                continue
            self.statement(path, s, sids)

    # -------------------------------------------------------------- statement level

    def statement(self, path: str, s: dict[str, Any], sids: dict[str, str]) -> None:
        for name in s:
            if name not in _STATEMENT_MEMBERS:
                self.error(child_path(path, name),
                           f"unknown statement member {_show(name)}; allowed members are "
                           f"{', '.join(_STATEMENT_MEMBERS)}{_suggest(name, _STATEMENT_MEMBERS)}")
        if "Sid" in s:
            self.sid(child_path(path, "Sid"), s["Sid"], sids)
        effect = self.effect(path, s)
        self.actions(path, s, effect)
        self.resources(path, s, effect)
        self.principals(path, s, effect)
        if "Condition" in s:
            self.condition(child_path(path, "Condition"), s["Condition"], effect)

    def sid(self, path: str, sid: Any, sids: dict[str, str]) -> None:
        if not isinstance(sid, str):
            self.error(path, f'Sid must be a string such as "ReadStreams"; got {_kind(sid)}')
            return
        if self.rules.iam_sid and not _SID.fullmatch(sid):
            fixed = re.sub(r"[^A-Za-z0-9]", "", sid) or "Statement1"
            self.error(path, f"Sid may contain only ASCII letters and digits (A-Z, a-z, 0-9); got {_show(sid)}: "
                             f'write e.g. "{fixed}"')
        if sid:
            if sid in sids:
                self.error(path, f"Sid {_show(sid)} is already used by {sids[sid]}; Sids must be unique within a "
                                 "policy: rename one of them")
            else:
                sids[sid] = path.rsplit(".Sid", 1)[0]

    def effect(self, path: str, s: dict[str, Any]) -> str | None:
        if "Effect" not in s:
            self.error(path, 'the statement has no Effect; add "Effect": "Allow" or "Effect": "Deny"')
            return None
        e = s["Effect"]
        if e not in ("Allow", "Deny"):
            self.error(child_path(path, "Effect"),
                       f'Effect must be exactly "Allow" or "Deny" (case-sensitive); got {_show(e)}')
            return None
        if e == "Allow" and self.rules.deny_only:
            self.error(child_path(path, "Effect"), 'custom resource control policies may only deny (the one Allow '
                                                   'RCP, RCPFullAWSAccess, is AWS-managed): write "Effect": "Deny"')
        return str(e)

    def exclusive(self, path: str, s: dict[str, Any], a: str, b: str, example: str) -> list[str]:
        """Which of two mutually exclusive members are present; reports having both or neither.

        Both are still returned when both are present, so that their entries get checked too."""
        present = [name for name in (a, b) if name in s]
        if len(present) == 2:
            self.error(path, f'a statement may contain "{a}" or "{b}", not both: remove one of them')
        elif not present:
            self.error(path, f'the statement has neither "{a}" nor "{b}"; add e.g. "{a}": {example}')
        return present

    def strings(self, path: str, value: Any, what: str) -> list[tuple[str, str]]:
        """The (path, text) entries of a string-or-array-of-strings element; reports shape problems."""
        if isinstance(value, str):
            return [(path, value)]
        if not isinstance(value, list):
            self.error(path, f"{what} must be a string or an array of strings; got {_kind(value)}")
            return []
        if not value:
            self.error(path, f"{what} must not be an empty array; list at least one entry")
            return []
        if len(value) > limits.MAX_LIST_ITEMS:
            self.error(path, f"{what} has {len(value)} entries; the limit is {limits.MAX_LIST_ITEMS}: use wildcards "
                             "or split the statement")
        out: list[tuple[str, str]] = []
        for i, v in enumerate(value):
            p = child_path(path, i)
            if isinstance(v, str):
                out.append((p, v))
            else:
                self.error(p, f"each {what} entry must be a string; got {_kind(v)} {_show(v)}")
        return out

    def pattern_length(self, path: str, text: str) -> bool:
        if len(text) > limits.MAX_PATTERN_CHARS:
            self.error(path, f"this entry has {len(text)} characters; the limit for one pattern is "
                             f"{limits.MAX_PATTERN_CHARS}: shorten it, e.g. with a wildcard")
            return False
        return True

    # -------------------------------------------------------------- Action / NotAction (spec 1.5)

    def actions(self, path: str, s: dict[str, Any], effect: str | None) -> None:
        for which in self.exclusive(path, s, "Action", "NotAction", _EXAMPLE_ACTION):
            epath = child_path(path, which)
            if which == "NotAction" and effect == "Allow":
                self.warn(epath, "Allow with NotAction grants every other action of every service (limited only by "
                                 "Resource); list the allowed actions in Action instead")
            for p, a in self.strings(epath, s[which], which):
                if self.pattern_length(p, a):
                    self.action(p, a, which)

    def action(self, path: str, a: str, which: str) -> None:
        if a == "*":
            return
        if not a or any(c in a for c in _BAD_ACTION_CHARS):
            self.error(path, f"{which} entry {_show(a)} is empty or contains white space or a comma; write one "
                             f'action per string, e.g. ["kinesisvideo:GetMedia", "kinesisvideo:PutMedia"]')
            return
        colons = a.count(":")
        if colons == 0:
            self.error(path, f"{which} entry {_show(a)} has no service prefix; write \"service:Action\", e.g. "
                             f'{_EXAMPLE_ACTION} (or "*" for every action)')
            return
        if colons > 1:
            if "${" in a:
                self.error(path, f"{which} entry {_show(a)} has more than one ':' (the ':' inside ${{...}} counts: "
                                 "policy variables are not expanded in actions); list the actions literally, "
                                 f"e.g. {_EXAMPLE_ACTION}")
            else:
                self.error(path, f"{which} entry {_show(a)} has more than one ':'; an action is "
                                 f'"service:Action" with exactly one colon, e.g. {_EXAMPLE_ACTION}')
            return
        service, name = a.split(":")
        if not service:
            self.error(path, f"{which} entry {_show(a)} has an empty service prefix; write it before the colon, "
                             f"e.g. {_EXAMPLE_ACTION}")
        elif _has_wildcard(service):
            self.error(path, f"{which} entry {_show(a)} has a wildcard in the service prefix; write the prefix "
                             'literally and put wildcards after the colon, e.g. "kinesisvideo:Get*"')
        elif not _SERVICE_PREFIX.fullmatch(service):
            self.error(path, f"{which} entry {_show(a)} has an invalid service prefix {_show(service)}; a prefix "
                             'has only letters, digits, "-" and ".", e.g. "kinesisvideo"')
        if not name:
            self.error(path, f"{which} entry {_show(a)} has no action name after the colon; write e.g. "
                             f'"{service}:*" for every action of the service')
        elif "${" in name:
            self.warn(path, f"policy variables are not expanded in actions: {_show(a)} matches only that literal "
                            "text; list the action names literally")
        if self.ptype is PolicyType.TRUST and service.lower() != "sts" and not _has_wildcard(service):
            self.warn(path, f"{_show(a)} is not an sts action; trust policies control role assumption: use "
                            "sts:AssumeRole, sts:AssumeRoleWithSAML, sts:AssumeRoleWithWebIdentity or "
                            "sts:TagSession")

    # -------------------------------------------------------------- Resource / NotResource (spec 1.6)

    def resources(self, path: str, s: dict[str, Any], effect: str | None) -> None:
        if not self.rules.resource:
            for name in ("Resource", "NotResource"):
                if name in s:
                    self.error(child_path(path, name), f'a role trust policy has no "{name}": the role itself is '
                                                       f'the resource; remove "{name}"')
            return
        example = f'{_EXAMPLE_ARN} (or "*" for every resource)'
        for which in self.exclusive(path, s, "Resource", "NotResource", example):
            epath = child_path(path, which)
            if which == "NotResource" and effect == "Allow":
                self.warn(epath, "Allow with NotResource grants the listed actions on every other resource of every "
                                 "service; list the allowed resources in Resource instead")
            for p, r in self.strings(epath, s[which], which):
                if self.pattern_length(p, r):
                    self.resource(p, r, which)

    def resource(self, path: str, r: str, which: str) -> None:
        if r == "*":
            return
        if not r.startswith("arn:"):
            self.error(path, f'{which} entry must be "*" or an ARN "arn:partition:service:region:account:resource", '
                             f"e.g. {_EXAMPLE_ARN}; got {_show(r)}")
            return
        if "${" in r and not self.variables:
            self.warn(path, f"{_show(r)} contains ${{...}}, which is literal text because the policy's Version is "
                            f'not "{VERSION_2012}"; add "Version": "{VERSION_2012}" to use policy variables')
        parts = parse_parts(r, self.variables)
        fields = _split_fields(parts)
        if len(fields) < 6:
            last = _literal(fields[-1])
            if last is None or not last.endswith("*"):
                self.error(path, f"{which} entry {_show(r)} has fewer than six ':'-separated fields; write the full "
                                 f"ARN, e.g. {_EXAMPLE_ARN}, or end a shortened pattern with '*'")
                return
        if len(fields) < 3:
            self.error(path, f"{which} entry {_show(r)} names no service; write e.g. {_EXAMPLE_ARN}")
            return
        for i, segment in ((PARTITION, "partition"), (SERVICE, "service"), (REGION, "region"), (ACCOUNT, "account")):
            if i < len(fields) and _literal(fields[i]) is None:
                self.error(path, f"{which} entry {_show(r)} has a policy variable in the {segment} segment; "
                                 "variables are allowed only in the resource segment (after the fifth ':'): write "
                                 f"the {segment} literally")
                return
        partition = _literal(fields[PARTITION]) or ""
        if not self.known_partition(partition):
            self.error(path, f"{which} entry {_show(r)} has unknown partition {_show(partition)}; use "
                             f"{', '.join(_PARTITIONS)} (or a wildcard)")
        service = _literal(fields[SERVICE]) or ""
        if _has_wildcard(service):
            self.error(path, f"{which} entry {_show(r)} has a wildcard in the service segment {_show(service)}; "
                             'write the service literally, e.g. "arn:aws:kinesisvideo:*:*:stream/*"')
            return
        if not _SERVICE_PREFIX.fullmatch(service):
            self.error(path, f"{which} entry {_show(r)} has an invalid service segment {_show(service)}; write a "
                             'service name such as "kinesisvideo"')
            return
        if len(fields) == ARN_FIELDS:
            self.resource_segment(path, r, which, service.lower(), fields[RESOURCE])

    def known_partition(self, partition: str) -> bool:
        if _has_wildcard(partition):
            g = Glob(tokens_of(partition.lower()), partition)
            return any(g.match(p) for p in _PARTITIONS)
        return partition.lower() in _PARTITIONS

    def resource_segment(self, path: str, r: str, which: str, service: str, segment: list[Part]) -> None:
        if not segment:
            self.error(path, f"{which} entry {_show(r)} has an empty resource segment; write the resource after "
                             "the fifth ':', e.g. stream/cam-01/* (or * for all)")
            return
        self.variable_syntax(path, segment)
        if service not in _TYPED_RESOURCE_SERVICES or segment == ["*"]:
            return
        rtype: list[str] = []
        for p in segment:
            if isinstance(p, str):
                head = p.split("/", 1)[0]
                rtype.append(head)
                if _has_wildcard(head):
                    break
                if "/" in p:
                    self.known_resource_type(path, r, service, "".join(rtype))
                    return
            else:
                break
        else:
            return  # no "/" and nothing variable: a type-less resource such as IAM's `root`
        self.error(path, f"{which} entry {_show(r)} has a wildcard or variable in its resource type (the part "
                         "before the first '/'); write the type literally and put wildcards after it, e.g. "
                         '"...:stream/cam-*" rather than "...:str*/..."')

    def known_resource_type(self, path: str, r: str, service: str, rtype: str) -> None:
        # IAM does not check per-service resource formats when it stores a policy, so this is only a warning.
        known = _KNOWN_RESOURCE_TYPES.get(service)
        if known is not None and rtype not in known:
            self.warn(path, f"{_show(r)} has resource type {_show(rtype)}, which no {service} resource has, so it "
                            f"matches nothing; use {' or '.join(t + '/NAME/...' for t in known)}")

    def variable_syntax(self, path: str, parts: list[Part] | tuple[Part, ...]) -> None:
        for p in parts:
            if isinstance(p, Var) and (not p.name or "," in p.name or "'" in p.name):
                self.error(path, f"malformed policy variable ${{{p.name}}}; write ${{key}} or "
                                 "${key, 'default value'}, e.g. ${aws:username}")

    # -------------------------------------------------------------- Principal / NotPrincipal (spec 1.7)

    def principals(self, path: str, s: dict[str, Any], effect: str | None) -> None:
        mode = self.rules.principal
        has_p, has_np = "Principal" in s, "NotPrincipal" in s
        if mode == "forbidden":
            for name in ("Principal", "NotPrincipal"):
                if name in s:
                    self.error(child_path(path, name),
                               f'"{name}" is not allowed in {self.rules.label}: they apply to whoever they are '
                               f'attached to; remove it (to restrict callers, use a condition on aws:PrincipalArn)')
            return
        if has_np and mode != "either":
            self.error(child_path(path, "NotPrincipal"), f'"NotPrincipal" is not allowed in {self.rules.label}; '
                                                         'use "Principal" (with conditions to exclude callers)')
        if mode == "either" and has_p and has_np:
            self.error(path, 'a statement may contain "Principal" or "NotPrincipal", not both: remove one of them')
            return
        if not has_p and not (mode == "either" and has_np):
            example = '"*"' if mode == "star" else '{"AWS": "arn:aws:iam::111122223333:root"}'
            self.error(path, f'{self.rules.label} need a "Principal" in every statement naming whom it applies to; '
                             f'add e.g. "Principal": {example}')
        if has_np and mode == "either":
            ppath = child_path(path, "NotPrincipal")
            if effect == "Allow":
                self.warn(ppath, "NotPrincipal with Allow grants access to everyone not listed, including anonymous "
                                 'callers; use "Principal" listing whom to allow')
            self.principal_value(ppath, s["NotPrincipal"], "NotPrincipal")
        if has_p:
            ppath = child_path(path, "Principal")
            if mode == "star":
                if s["Principal"] != "*":
                    self.error(ppath, f'resource control policies apply to every principal: write "Principal": "*" '
                                      f"and narrow with conditions such as aws:PrincipalAccount; got "
                                      f"{_show(s['Principal'])}")
                return
            self.principal_value(ppath, s["Principal"], "Principal")

    def principal_value(self, path: str, value: Any, which: str) -> None:
        if value == "*":
            return
        if isinstance(value, str):
            self.error(path, f'{which} must be "*" or an object such as {{"AWS": "{value}"}}; got {_show(value)}')
            return
        if not isinstance(value, dict):
            self.error(path, f'{which} must be "*" or an object such as {{"AWS": "111122223333"}}; got {_kind(value)}')
            return
        if not value:
            self.error(path, f'{which} must not be an empty object; add e.g. {{"AWS": "111122223333"}}')
            return
        for key, raw in value.items():
            kpath = child_path(path, key)
            if key not in _PRINCIPAL_KEYS:
                self.error(kpath, f"unknown principal type {_show(key)}; use AWS, Service, Federated or "
                                  f"CanonicalUser{_suggest(key, _PRINCIPAL_KEYS)}")
                continue
            if key == "Federated" and self.ptype is not PolicyType.TRUST:
                self.warn(kpath, "Federated principals take effect only in role trust policies "
                                 "(AssumeRoleWithWebIdentity / AssumeRoleWithSAML); use an AWS principal here")
            for p, v in self.strings(kpath, raw, f"{which} {key}"):
                if self.pattern_length(p, v):
                    self.principal_entry(p, key, v)

    def principal_entry(self, path: str, key: str, v: str) -> None:
        if v == "*" and key == "AWS":
            return
        if "${" in v:
            self.error(path, f"policy variables are not allowed in principals; got {_show(v)}: name the principal "
                             "literally, or use Principal \"*\" with a condition on aws:PrincipalArn")
            return
        if _has_wildcard(v):
            self.error(path, f"{_show(v)} uses a wildcard to match part of a principal, which is not allowed; "
                             'use "Principal": "*" with a condition such as "ArnLike": {"aws:PrincipalArn": '
                             f"{_show(v)}}}")
            return
        if key == "AWS":
            self.aws_principal(path, v)
        elif key == "Service":
            if not _SERVICE_PRINCIPAL.fullmatch(v):
                self.error(path, f"{_show(v)} is not a service principal; write a name such as "
                                 '"ec2.amazonaws.com"')
        elif key == "Federated":
            f = split_arn(v)
            if f is not None:
                _, partition, service, region, account, res = f
                if partition not in _PARTITIONS:
                    self.error(path, f"{_show(v)} has unknown partition {_show(partition)}; use "
                                     f"{', '.join(_PARTITIONS)}")
                elif service != "iam" or not res.startswith(("saml-provider/", "oidc-provider/")):
                    self.error(path, f"{_show(v)} is not an identity-provider ARN; write "
                                     '"arn:aws:iam::111122223333:saml-provider/NAME" (or oidc-provider/HOST)')
                elif not _ACCOUNT_ID.fullmatch(account):
                    self.error(path, f"{_show(v)} needs the 12-digit account id in its account field")
                elif not _ARN_RESOURCE.fullmatch(res) or region:
                    self.error(path, f"{_show(v)} must have an empty region and a provider name of printable ASCII "
                                     "without white space")
            elif not _HOST.fullmatch(v):
                self.error(path, f"{_show(v)} is not a federated principal; write an identity provider such as "
                                 '"cognito-identity.amazonaws.com", "accounts.google.com" or a saml-provider ARN')
        elif not _CANONICAL_USER.fullmatch(v):
            self.error(path, f"{_show(v)} is not a canonical user id; write the 64-character hexadecimal id")

    def aws_principal(self, path: str, v: str) -> None:
        if _ACCOUNT_ID.fullmatch(v) or _UNIQUE_ID.fullmatch(v):
            return
        hint = ('an AWS principal is "*", a 12-digit account id, an IAM ARN (arn:aws:iam::111122223333:root, '
                "...:user/NAME, ...:role/NAME), an STS session ARN (arn:aws:sts::111122223333:assumed-role/ROLE/"
                "SESSION, ...:federated-user/NAME) or a unique id (AIDA..., AROA...)")
        f = split_arn(v)
        if f is None:
            self.error(path, f"{_show(v)} is not a principal; {hint}")
            return
        _, partition, service, region, account, res = f
        if partition not in _PARTITIONS:
            self.error(path, f"{_show(v)} has unknown partition {_show(partition)}; use {', '.join(_PARTITIONS)}")
        if region or not _ACCOUNT_ID.fullmatch(account):
            self.error(path, f"{_show(v)} must have an empty region and a 12-digit account id, e.g. "
                             "arn:aws:iam::111122223333:user/NAME")
            return
        if not _ARN_RESOURCE.fullmatch(res):
            self.error(path, f"{_show(v)} has white space, control or non-ASCII characters in its name part; IAM "
                             "and STS names are printable ASCII (letters, digits and +=,.@_-, paths /.../)")
            return
        if service == "iam":
            kind, _, name = res.partition("/")
            if res == "root" or (kind in ("user", "role") and name and not name.endswith("/")):
                return
            if kind == "group":
                self.error(path, f"{_show(v)} names an IAM group, and groups cannot be principals; name its users, "
                                 "or use a condition on aws:PrincipalArn")
                return
        elif service == "sts":
            bits = res.split("/")
            if (bits[0] == "assumed-role" and len(bits) == 3 and all(bits)) or \
                    (bits[0] == "federated-user" and len(bits) == 2 and bits[1]):
                return
        self.error(path, f"{_show(v)} is not a principal ARN; {hint}")

    # -------------------------------------------------------------- Condition (spec 1.8, 4)

    def condition(self, path: str, cond: Any, effect: str | None) -> None:
        if not isinstance(cond, dict):
            self.error(path, 'Condition must be an object such as {"StringEquals": {"aws:PrincipalTag/team": '
                             f'"red"}}}}; got {_kind(cond)}')
            return
        # A `Null {key: "false"}` guard closes the fail-open hole of ForAllValues, so it silences that warning.
        guarded: set[str] = set()
        null_block = cond.get("Null")
        if isinstance(null_block, dict):
            for k, v in null_block.items():
                if any((value_text(x) or "").lower() == "false" for x in (v if isinstance(v, list) else [v])):
                    guarded.add(k.lower())
        for op_name, block in cond.items():
            opath = child_path(path, op_name)
            op = parse_operator(op_name)
            if op is None:
                self.error(opath, f"unknown condition operator {_show(op_name)}; write a known operator such as "
                                  f"StringEquals, optionally with ForAllValues:/ForAnyValue: before it and IfExists "
                                  f"after it{_suggest(op_name, _ALL_OPERATOR_NAMES)}")
                continue
            if op.base == "Null" and op.if_exists:
                self.error(opath, 'Null does not take IfExists (Null itself tests whether the key exists); write '
                                  '"Null"')
            elif op.base == "Null" and op.qualifier:
                self.warn(opath, f"{op.qualifier} has no meaning on Null; write \"Null\"")
            if not isinstance(block, dict):
                self.error(opath, f"the {op_name} block must be an object of condition keys, e.g. "
                                  f'{{"aws:PrincipalTag/team": "red"}}; got {_kind(block)}')
                continue
            if not block:
                self.error(opath, f"the {op_name} block is empty; list at least one condition key, or remove it")
                continue
            for key, values in block.items():
                self.condition_key(child_path(opath, key), op, key, values, effect, guarded)

    def condition_key(self, path: str, op: OperatorName, key: str, values: Any, effect: str | None,
                      guarded: set[str]) -> None:
        if not key or "${" in key or ":" not in key:
            self.error(path, f"condition key {_show(key)} is invalid; a key is \"prefix:name\" without policy "
                             "variables, e.g. aws:SourceIp or aws:PrincipalTag/team")
        texts = self.condition_values(path, op, values)
        lkey = key.lower()
        if op.qualifier is not None and op.base != "Null" and lkey not in MULTIVALUED_KEYS:
            self.warn(path, f"{op.qualifier} on {key}, which is not a known multivalued key: on a single-valued "
                            f"key a set qualifier is overly permissive; use {op.base}"
                            f"{'IfExists' if op.if_exists else ''} without the qualifier unless the key is "
                            "multivalued")
        if op.qualifier is None and op.base != "Null" and lkey in MULTIVALUED_KEYS:
            self.warn(path, f"{op.name} on the multivalued key {key} does not match when the request carries two "
                            f"or more values; write ForAnyValue:{op.name} or ForAllValues:{op.name}")
        if op.qualifier == "ForAllValues" and op.base != "Null" and effect == "Allow" and lkey not in guarded:
            self.warn(path, f"ForAllValues in an Allow statement also matches when {key} is absent or empty; add "
                            f'"Null": {{"{key}": "false"}} or use ForAnyValue')
        if (effect == "Deny" and op.base == "Bool" and op.qualifier is None and not op.if_exists
                and lkey == "aws:multifactorauthpresent" and any(t.lower() == "false" for t in texts)):
            self.warn(path, "Deny with Bool aws:MultiFactorAuthPresent \"false\" does not deny long-term access keys "
                            "(the key is absent for them); use BoolIfExists")

    def condition_values(self, path: str, op: OperatorName, values: Any) -> list[str]:
        if isinstance(values, list):
            if not values:
                self.error(path, "the value array is empty; give at least one value, or remove the key")
                return []
            if len(values) > limits.MAX_LIST_ITEMS:
                self.error(path, f"the key has {len(values)} values; the limit is {limits.MAX_LIST_ITEMS}: use "
                                 "wildcards or split the condition")
            entries = [(child_path(path, i), v) for i, v in enumerate(values)]
        else:
            entries = [(path, values)]
        texts: list[str] = []
        for vpath, v in entries:
            t = value_text(v)
            if t is None:
                if v is None:
                    self.error(vpath, 'a condition value cannot be JSON null; write a string, number or boolean '
                                      '(to test that a key is absent use "Null": {"<key>": "true"})')
                else:
                    self.error(vpath, f"a condition value must be a string, number or boolean (or an array of "
                                      f"these); got {_kind(v)} {_show(v)}")
                continue
            if self.pattern_length(vpath, t):
                texts.append(t)
                self.condition_value(vpath, op, t)
        return texts

    def condition_value(self, path: str, op: OperatorName, t: str) -> None:
        family = op.spec.family
        parts = parse_parts(t, self.variables and op.spec.variables)
        dynamic = any(isinstance(p, Var) for p in parts)
        self.variable_syntax(path, parts)
        suffix = ""
        if "${" in t and self.variables and not op.spec.variables:
            suffix = f" (policy variables are not substituted in {op.base} values)"
        elif "${" in t and not self.variables and op.spec.variables:
            self.warn(path, f"{_show(t)} contains ${{...}}, which is literal text because the policy's Version is "
                            f'not "{VERSION_2012}"; add "Version": "{VERSION_2012}" to use policy variables')
        bad = ""
        if family == "numeric" and parse_number(t) is None:
            bad = f'{op.base} needs a number such as "10" or "2.5"'
        elif family == "date" and parse_date(t) is None:
            bad = (f'{op.base} needs an ISO-8601 date such as "2026-01-31T12:00:00Z" or epoch seconds such as '
                   '"1767225600"')
        elif family == "ip" and parse_ip_network(t) is None:
            bad = f'{op.base} needs an IP address or CIDR range such as "203.0.113.0/24" or "2001:db8::/32"'
        elif family == "binary" and parse_base64(t) is None:
            bad = f'{op.base} needs base64-encoded bytes such as "QmluYXJ5VmFsdWU="'
        elif family == "bool" and not dynamic and t.lower() not in ("true", "false"):
            bad = f'{op.base} needs "true" or "false"'
        elif family == "null" and t.lower() not in ("true", "false"):
            bad = 'Null needs "true" (the key is absent) or "false" (the key is present)'
        if bad:
            self.error(path, f"{bad}; got {_show(t)}{suffix}")
        elif family == "arn" and not dynamic and not any(isinstance(p, Special) for p in parts) \
                and not compile_arn_like(t).valid:
            self.warn(path, f"{_show(t)} is not a six-field ARN pattern, so {op.base} never matches it; write a "
                            "full ARN pattern such as arn:aws:iam::111122223333:role/* or use StringLike")
