"""Least-privilege identity policies from a decision log: exactly the (action, resource) pairs a principal was allowed.

`generate(lines, principal)` reads decision-log lines (authz/server/decision_log.py, docs/observability.md),
keeps the principal's Allow decisions (from `since` on, when given) and writes an identity policy that allows
those pairs and nothing else, generalised in one way only: a Kinesis Video Streams stream or channel ARN ends
with its creation time (`.../stream/NAME/1600000000000`), and that suffix becomes `*`, so the policy outlives a
stream deleted and created again under the same name. Every stream and channel stays listed by name. Actions
allowed on the same set of resources share one statement. Characters a policy would read as wildcards or
variables (`*`, `?`, `${`) are written as the literal escapes `${*}`, `${?}`, `${$}`, so no logged name can widen
the policy. A request logged on resource `*` (ListStreams) is allowed on `*`, which for an action that takes a
resource is wider than the log: a note says so. Each document is checked with the validator, its size quota
included; one that would exceed the quota is split into several documents when asked, and refused with the
figures otherwise.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from ..policy import limits, lint
from ..policy.arn import RESOURCE, SERVICE, split_arn
from ..policy.errors import AuthzError
from ..policy.model import VERSION_2012, PolicyType
from ..policy.validate import ValidatorOptions, validate_document
from ..requests import check_target

__all__ = ["GenerateError", "Generated", "SIZE_KINDS", "DEFAULT_SIZE_KIND", "generate", "parse_since",
           "policy_documents", "resource_pattern", "read_allowed", "star_notes", "text_lines"]

MAX_LOG_LINE_CHARS = 65_536          # one decision-log line (the server writes well under 10 KB)
MAX_PRINCIPALS_NAMED = 5             # principals listed when the one asked for is not in the log
MAX_PART_NUMBER = 999_999            # parts of one split statement: more than any log can need
ALLOW = "Allow"
REQUIRED_FIELDS = ("time", "principal", "action", "resource", "decision")

# Identity-policy size quotas a generated policy can be held to (keys of limits.SIZE_LIMITS). The default,
# a customer managed policy, is the one that can be attached to users, groups and roles alike.
SIZE_KINDS = ("managed", "inline-role", "inline-group", "inline-user")
DEFAULT_SIZE_KIND = "managed"

# A KVS stream or channel resource: TYPE/NAME/CREATION, the creation time in epoch milliseconds.
_SUFFIXED = re.compile(r"(stream|channel)/([^/]+)/([0-9]+)")
_SPECIAL = re.compile(r"[*?]|\$(?=\{)")          # what a policy reads as a wildcard or the start of a variable
_SID_CHARS = re.compile(r"[^A-Za-z0-9]")
_EPOCH = re.compile(r"[0-9]+(\.[0-9]+)?")


class GenerateError(AuthzError):
    """The log cannot give a policy: unreadable, malformed at a line, empty, or without the principal's allows."""


@dataclass(frozen=True)
class Allowed:
    """What the log says the principal was allowed: distinct (action, resource) pairs and where they came from."""

    pairs: frozenset[tuple[str, str]]
    decisions: int                   # the principal's Allow lines counted (after `since`)
    first: datetime | None
    last: datetime | None
    lines: int                       # non-empty lines read


@dataclass(frozen=True)
class Generated:
    """The policy documents (one unless split) and the log figures they were made from."""

    documents: tuple[dict[str, Any], ...]
    allowed: Allowed
    size_kind: str
    notes: tuple[str, ...] = ()      # what the reader should know before attaching the policy

    def summary(self, principal: str) -> str:
        a = self.allowed
        span = f" between {a.first.isoformat()} and {a.last.isoformat()}" if a.first and a.last else ""
        docs = f"{len(self.documents)} policies" if len(self.documents) > 1 else "1 policy"
        statements = sum(len(d["Statement"]) for d in self.documents)
        return (f"{docs} ({statements} statements, within the {self.size_kind} quota of "
                f"{limits.SIZE_LIMITS[self.size_kind][0]:,} characters) from {a.decisions:,} Allow decisions of "
                f"{principal}{span}: {len(a.pairs):,} distinct action/resource pairs")


# ------------------------------------------------------------------ reading the log


def parse_since(text: str) -> datetime:
    """`--since`: epoch seconds (`1768478400`, `1768478400.5`) or ISO 8601 (`2026-01-15T12:00:00Z`,
    `2026-01-15`); a time without an offset is UTC."""
    value = text.strip()
    if _EPOCH.fullmatch(value):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds > datetime.max.replace(tzinfo=timezone.utc).timestamp():
            raise GenerateError(f"--since {text!r}: epoch seconds out of range")
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise GenerateError(f"--since {text!r}: write epoch seconds (1768478400) or an ISO 8601 time "
                            "(2026-01-15T12:00:00Z, 2026-01-15)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def text_lines(raw: Iterable[bytes], source: str = "the decision log") -> Iterator[str]:
    """Lines of a log file read in binary, decoded as UTF-8; a line that is not UTF-8 is an error naming it."""
    for number, line in enumerate(raw, 1):
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GenerateError(f"{source}:{number}: not UTF-8 ({exc.reason} at byte {exc.start}); the sidecar "
                                "writes its decision log in UTF-8") from None


def session_prefix(principal: str) -> str | None:
    """For a role ARN, the ARN prefix of its sessions (`arn:aws:sts::ACCOUNT:assumed-role/NAME/`): the decision
    log names a role's sessions, never the role. None for any other principal."""
    fields = split_arn(principal)
    if fields is None or fields[SERVICE] != "iam" or not fields[RESOURCE].startswith("role/"):
        return None
    name = fields[RESOURCE].rsplit("/", 1)[-1]
    return f"arn:{fields[1]}:sts::{fields[4]}:assumed-role/{name}/" if name else None


def read_allowed(lines: Iterable[str], principal: str, since: datetime | None = None,
                 source: str = "the decision log") -> Allowed:
    """The principal's allowed (action, resource) pairs in decision-log lines (a role: its sessions'). Every line
    is checked, whoever it is about: a malformed one is an error naming `source:LINE`."""
    prefix = session_prefix(principal)
    pairs: set[tuple[str, str]] = set()
    seen: dict[str, int] = {}
    decisions = mine = lines_read = 0
    first: datetime | None = None
    last: datetime | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        lines_read += 1
        record = _record(line, number, source)
        when = _time(record, number, source)
        who = record["principal"]
        seen[who] = seen.get(who, 0) + 1
        if who != principal and (prefix is None or not who.startswith(prefix)):
            continue
        mine += 1
        if record["decision"] != ALLOW or (since is not None and when < since):
            continue
        action, resource = record["action"], record["resource"]
        try:
            check_target(who, action, resource)
        except AuthzError as exc:
            raise GenerateError(f"{source}:{number}: an Allow line with a malformed request ({exc}); the line is "
                                "not one the sidecar writes: remove it or fix the log") from None
        pairs.add((action, resource))
        decisions += 1
        first = when if first is None or when < first else first
        last = when if last is None or when > last else last
    if not lines_read:
        raise GenerateError(f"{source} holds no decisions (it is empty): give the file a sidecar writes with "
                            "--decision-log PATH")
    if not mine:
        named = [p or '"" (refused before a decision)' for p, _ in
                 sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_PRINCIPALS_NAMED]]
        more = ", ..." if len(seen) > MAX_PRINCIPALS_NAMED else ""
        sessions = " (nor any session of that role)" if prefix else ""
        raise GenerateError(f"{principal} is not in {source}{sessions}: its {lines_read:,} decisions are about "
                            f"{len(seen):,} other principals ({', '.join(named)}{more}); "
                            "check the ARN (a role's decisions are logged under its sessions, "
                            "arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION)")
    if not pairs:
        after = f" since {since.isoformat()}" if since is not None else ""
        raise GenerateError(f"{principal} has no Allow decision in {source}{after} ({mine:,} decisions, none "
                            "allowed): there is nothing to generate a policy from")
    return Allowed(frozenset(pairs), decisions, first, last, lines_read)


def _record(line: str, number: int, source: str) -> dict[str, Any]:
    where = f"{source}:{number}"
    if len(line) > MAX_LOG_LINE_CHARS:
        raise GenerateError(f"{where}: the line is longer than {MAX_LOG_LINE_CHARS:,} characters "
                            "(MAX_LOG_LINE_CHARS); a decision-log line is one JSON object of a few hundred")
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise GenerateError(f"{where}: not a JSON object ({exc}); each line of a decision log is one JSON "
                            "object (docs/observability.md)") from None
    if not isinstance(record, dict):
        raise GenerateError(f"{where}: a JSON {type(record).__name__}, not an object; each line of a decision log "
                            "is one JSON object (docs/observability.md)")
    for key in REQUIRED_FIELDS:
        if not isinstance(record.get(key), str):
            problem = "is missing" if key not in record else "is not a string"
            raise GenerateError(f"{where}: the field {key!r} {problem}; a decision-log line has "
                                f"{', '.join(REQUIRED_FIELDS)} (docs/observability.md)")
    return record


def _time(record: dict[str, Any], number: int, source: str) -> datetime:
    try:
        when = datetime.fromisoformat(record["time"])
    except ValueError:
        raise GenerateError(f"{source}:{number}: the time {record['time'][:40]!r} is not ISO 8601 "
                            "(the sidecar writes 2026-01-15T12:00:00.120+00:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------ writing the policy


def _literal(text: str) -> str:
    """`text` as policy text that matches exactly itself: wildcards and `${` written as their escapes."""
    return _SPECIAL.sub(lambda m: "${" + m.group(0) + "}", text)


def resource_pattern(resource: str) -> str:
    """The Resource entry for one logged resource: the ARN itself (escaped), or for a KVS stream or channel
    ARN ending with its creation time, the same ARN with that suffix as `*`."""
    if resource == "*":
        return "*"
    fields = split_arn(resource)
    if fields is not None and fields[SERVICE].lower() == "kinesisvideo":
        m = _SUFFIXED.fullmatch(fields[RESOURCE])
        if m:
            head = ":".join(fields[:RESOURCE])
            return f"{_literal(head)}:{m.group(1)}/{_literal(m.group(2))}/*"
    return _literal(resource)


def _action_key(action: str) -> str:
    return action.lower()      # action names compare case-insensitively


def statements(pairs: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """One Allow statement per distinct set of resources, holding every action allowed on exactly that set;
    sorted, so the same pairs always give the same text."""
    spelling: dict[str, str] = {}
    resources: dict[str, set[str]] = {}
    for action, resource in pairs:
        key = _action_key(action)
        spelling[key] = min(spelling.get(key, action), action)
        resources.setdefault(key, set()).add(resource_pattern(resource))
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, patterns in resources.items():
        groups.setdefault(tuple(sorted(patterns)), []).append(spelling[key])
    ordered = sorted((sorted(actions), list(res)) for res, actions in groups.items())
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    for actions, listed in ordered:
        out.append({"Sid": _sid(actions, used), "Effect": "Allow", "Action": _one_or_list(actions),
                    "Resource": _one_or_list(listed)})
    return out


def _sid(actions: list[str], used: set[str]) -> str:
    """A readable, unique Sid: the first action's name, `And3More` for the others."""
    name = _SID_CHARS.sub("", actions[0].split(":", 1)[-1]) or "Action"
    base = f"Allow{name}" + (f"And{len(actions) - 1}More" if len(actions) > 1 else "")
    sid, n = base, 2
    while sid.lower() in used:
        sid, n = f"{base}{n}", n + 1
    used.add(sid.lower())
    return sid


def _one_or_list(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values


def _document(stmts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Version": VERSION_2012, "Statement": stmts}


def _size(stmts: list[dict[str, Any]]) -> int:
    """Characters as IAM counts them for identity policies: the compact text (validate._size_problems)."""
    return len(json.dumps(_document(stmts), separators=(",", ":"), ensure_ascii=False))


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _pieces(st: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """`st` as statements that each fit a document of `limit` characters: its resources in chunks, and when one
    resource with all the actions is still too large, the actions in chunks too."""
    if _size([st]) <= limit:
        return [st]
    actions, resources = _as_list(st["Action"]), _as_list(st["Resource"])
    out: list[dict[str, Any]] = []

    def part(acts: list[str], res: list[str], number: int = MAX_PART_NUMBER) -> dict[str, Any]:
        # Sized with the longest Sid a part can have, so that numbering never pushes a part over the quota.
        return {"Sid": f"{st['Sid']}Part{number}", "Effect": "Allow", "Action": _one_or_list(acts),
                "Resource": _one_or_list(res)}

    for act_chunk in _chunks(actions, lambda acts: part(acts, resources[:1]), limit, st):
        for res_chunk in _chunks(resources, lambda res: part(act_chunk, res), limit, st):
            out.append(part(act_chunk, res_chunk, len(out) + 1))
    return out


def _chunks(items: list[str], build: Any, limit: int, st: dict[str, Any]) -> list[list[str]]:
    """`items` cut greedily into runs for which `build(run)` fits a document of `limit` characters."""
    runs: list[list[str]] = []
    run: list[str] = []
    for item in items:
        if run and _size([build(run + [item])]) > limit:
            runs.append(run)
            run = []
        run.append(item)
        if len(run) == 1 and _size([build(run)]) > limit:
            raise GenerateError(f"one statement of statement {st['Sid']} alone ({_as_list(st['Action'])[0]} on "
                                f"{_as_list(st['Resource'])[0][:80]}...) exceeds the size quota of {limit:,} "
                                "characters; use a size kind with a larger quota")
    if run:
        runs.append(run)
    return runs


def policy_documents(pairs: Iterable[tuple[str, str]], *, size_kind: str = DEFAULT_SIZE_KIND,
                     split: bool = False) -> list[dict[str, Any]]:
    """The identity policy (or, with `split`, policies) allowing exactly `pairs`, each valid under the validator
    with the `size_kind` quota. Without `split`, a policy over the quota is a GenerateError with the figures."""
    if size_kind not in SIZE_KINDS:
        raise GenerateError(f"unknown size kind {size_kind!r}; use one of {', '.join(SIZE_KINDS)}")
    limit = limits.SIZE_LIMITS[size_kind][0]
    stmts = statements(pairs)
    if not stmts:
        raise GenerateError("no allowed action/resource pair to generate a policy from")
    whole = _size(stmts)
    if whole <= limit:
        docs = [stmts]
    elif not split:
        raise GenerateError(f"the policy would have {whole:,} characters (not counting white space) in "
                            f"{len(stmts)} statements, over the {size_kind} policy quota of {limit:,}: use --split "
                            "to write it as several policies, a larger --size-kind (inline-role: "
                            f"{limits.SIZE_LIMITS['inline-role'][0]:,}), or --since to cover less traffic")
    else:
        docs = []
        current: list[dict[str, Any]] = []
        for st in stmts:
            for piece in _pieces(st, limit):
                if current and _size(current + [piece]) > limit:
                    docs.append(current)
                    current = []
                current.append(piece)
        docs.append(current)
    out = [_document(d) for d in docs]
    for k, doc in enumerate(out):
        report = validate_document(doc, PolicyType.IDENTITY, options=ValidatorOptions(size_kind=size_kind))
        if not report.valid:     # a logged resource IAM would refuse (say, an unknown partition): say which
            which = f"policy {k + 1} of {len(out)}" if len(out) > 1 else "the policy"
            raise GenerateError(f"{which} is not valid: " + "; ".join(str(p) for p in report.errors[:5]))
    return out


def star_notes(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """A request logged on resource `*` can only be allowed by `"Resource": "*"`, which also allows that action on
    every resource. That is exact for an action with no resource type (ListStreams); for any other action (or one
    the tables do not know) it is wider than the log, and a note says so."""
    tables = lint.tables()
    wider: set[str] = set()
    for action, resource in pairs:
        if resource != "*":
            continue
        prefix, _, name = action.partition(":")
        service = tables.services.get(prefix.lower())
        documented = service.actions.get(name.lower()) if service is not None else None
        types = (service.resource_types or {}).get(documented) if service and documented else None
        if types != ():
            wider.add(action)
    return [f"{a} was requested on resource '*', so the policy allows it on every resource (not only the ones "
            "the log shows); narrow the Resource by hand if the gateway can name them" for a in sorted(wider)]


def generate(lines: Iterable[str], principal: str, since: datetime | None = None, *,
             size_kind: str = DEFAULT_SIZE_KIND, split: bool = False,
             source: str = "the decision log") -> Generated:
    """The least-privilege identity policy of `principal` from decision-log `lines` (see the module docstring)."""
    allowed = read_allowed(lines, principal, since, source)
    docs = policy_documents(allowed.pairs, size_kind=size_kind, split=split)
    return Generated(tuple(docs), allowed, size_kind, tuple(star_notes(allowed.pairs)))
