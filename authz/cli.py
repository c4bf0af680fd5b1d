"""The `authz` command: simulate, validate, test, check, watch and serve.

And push: publish a bundle to the fleet's store (fleet mode, `authz serve --store URL`); policy generate: a
least-privilege identity policy from a decision log (authz/analysis/generate.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO

from . import __version__
from .evaluate import Decision, PolicySet, Request, Result, evaluate
from .policy.errors import AuthzError, Problem
from .policy.jsontext import child_path, kind_of, load_document, load_text, plain
from .policy.limits import MAX_POLICY_TEXT_CHARS
from .policy.model import Policy, PolicyType, compile_policy, statement_shape_problem
from .policy import lint
from .policy.validate import ValidationReport, validate_document
from .policy.yamltext import load_yaml
from .requests import check_context, check_target

MAX_CASE_LINE_CHARS = 1_048_576     # one JSON Lines case (simulate / validate --jsonl)
MAX_TEST_FILE_CHARS = 16_777_216    # one `authz test` file
DEFAULT_CHECK_ADDR = "127.0.0.1:50051"


# ------------------------------------------------------------------ simulate


def _levels(case: dict[str, Any], key: str, prefix: str) -> tuple[tuple[Policy, ...], ...] | None:
    raw = case.get(key)
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(level, list) for level in raw):
        raise ValueError(f"{key} must be an array of arrays of policy documents")
    return tuple(tuple(_policy(p, f"{key}[{i}][{j}]", f"{prefix}{i}.{j}") for j, p in enumerate(level))
                 for i, level in enumerate(raw))


def _policy(doc: Any, where: str, name: str) -> Policy:
    """One policy of a case: a JSON object, or its JSON text (read as strictly as the line itself).
    Anything else is an error: a document that is silently left out could have held a Deny."""
    if isinstance(doc, str):
        value, problems = load_document(doc)
        if value is None:
            raise ValueError(f"{where}: " + "; ".join(str(p) for p in problems[:5]))
        doc = value
    if not isinstance(doc, dict):
        raise ValueError(f"{where} must be a policy document (a JSON object, or its JSON text); got {kind_of(doc)}")
    problem = statement_shape_problem(doc)
    if problem:
        raise ValueError(f"{where}: {problem}")
    return compile_policy(doc, name)


def case_policy_set(case: dict[str, Any]) -> PolicySet:
    """The policies of one simulate case (the decisions.jsonl format), compiled without validation."""
    identity = case.get("identityPolicies", [])
    if not isinstance(identity, list):
        raise ValueError("identityPolicies must be an array of policy documents")

    def one(key: str, name: str) -> Policy | None:
        return _policy(case[key], key, name) if key in case else None

    session = one("sessionPolicy", "session")
    return PolicySet(
        identity=tuple(_policy(p, f"identityPolicies[{i}]", f"identity{i}") for i, p in enumerate(identity)),
        resource=one("resourcePolicy", "resource"),
        boundary=one("permissionBoundary", "boundary"),
        session=(session,) if session is not None else None,
        scp_levels=_levels(case, "scpLevels", "scp"),
        rcp_levels=_levels(case, "rcpLevels", "rcp"),
    )


def case_request(case: dict[str, Any]) -> Request:
    for key in ("principal", "action", "resource"):
        if not isinstance(case.get(key), str) or not case[key]:
            raise ValueError(f"{key} is required (a string)")
    check_target(case["principal"], case["action"], case["resource"])
    context = case.get("context", {})
    if not isinstance(context, dict):
        raise ValueError("context must be an object of key -> string or array of strings")
    check_context(context)
    account = case.get("resourceAccount")
    if account is not None and not isinstance(account, str):
        raise ValueError("resourceAccount must be a string")
    return Request(case["principal"], case["action"], case["resource"], context, account)


def result_json(result: Result, explain: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"decision": result.decision.value,
                           "matched": [m.as_dict() for m in (result.matched if explain else result.deciding)]}
    if explain:
        out["explanation"] = {
            "decidedBy": result.decided_by, "blockedBy": result.blocked_by, "perPolicyType": dict(result.per_type),
            "resourceGrantKind": result.grant_kind, "sameAccount": result.same_account,
            "missingContextKeys": list(result.missing_keys), "notes": list(result.notes),
            "deciding": [m.as_dict() for m in result.deciding],
        }
    return out


def _json_lines(stream: TextIO) -> Iterator[tuple[Any, list[Problem]]]:
    """(case, problems) per non-empty line, each line read by the strict JSON reader (a member given
    twice anywhere, NaN or an out-of-range number is a problem). With problems the case is the
    line's object when there is one (for its id), else None."""
    for line in stream:
        if not line.strip():
            continue
        if len(line) > MAX_CASE_LINE_CHARS:
            yield None, [Problem("$", f"line longer than {MAX_CASE_LINE_CHARS} characters "
                                      "(MAX_CASE_LINE_CHARS)")]
            continue
        value, problems = load_text(line, iam_charset=False, max_chars=MAX_CASE_LINE_CHARS)
        case = plain(value) if isinstance(value, dict) else None
        if not problems and case is None:
            problems = [Problem("$", f"each line must be a JSON object; got {kind_of(value)}")]
        yield case, problems


def _line_error(problems: list[Problem]) -> str:
    more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
    return "; ".join(str(p) for p in problems[:5]) + more


def simulate_case(case: dict[str, Any], explain: bool) -> dict[str, Any]:
    try:
        res = evaluate(case_request(case), case_policy_set(case), explain=explain)
    except (ValueError, AuthzError, TypeError, RecursionError) as exc:
        return {"id": case.get("id"), "decision": None, "matched": [], "error": str(exc)}
    return {"id": case.get("id"), **result_json(res, explain), "error": None}


def cmd_simulate(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    for case, problems in _json_lines(stdin):
        if problems:
            out: dict[str, Any] = {"id": _case_id(case), "decision": None, "matched": [],
                                   "error": _line_error(problems)}
        else:
            out = simulate_case(case, args.explain)
        stdout.write(json.dumps(out, separators=(",", ":")) + "\n")
        stdout.flush()
    return 0


# ------------------------------------------------------------------ validate


def _case_id(case: Any) -> Any:
    return case.get("id") if isinstance(case, dict) else None


def cmd_validate(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    if args.jsonl:
        for case, problems in _json_lines(stdin):
            if problems:
                # Paths are the line's: `$.policy.Statement[0].Effect` names the member given twice.
                stdout.write(json.dumps({"id": _case_id(case), "valid": False,
                                         "errors": [p.as_dict() for p in problems], "warnings": []}) + "\n")
                continue
            try:
                ptype = PolicyType.parse(str(case.get("policyType", args.type)))
                source = case["policyText"] if "policyText" in case else case.get("policy")
                if source is None:
                    raise ValueError("each case needs `policy` or `policyText`")
                report = validate_document(source, ptype)
                found = lint.lint_document(report.document, ptype) if report.valid else []
                out = {"id": case.get("id"), "valid": report.valid, "errors": [p.as_dict() for p in report.errors],
                       "warnings": [p.as_dict() for p in report.warnings], "findings": [f.as_dict() for f in found]}
            except (ValueError, TypeError) as exc:
                out = {"id": case.get("id"), "valid": False, "errors": [{"path": "$", "message": str(exc)}],
                       "warnings": [], "findings": []}
            stdout.write(json.dumps(out, separators=(",", ":")) + "\n")
        return 0
    if not args.files:
        print("authz validate: name one or more policy files, or use --jsonl with cases on stdin", file=sys.stderr)
        return 2
    ptype = PolicyType.parse(args.type)
    checked = [_check_file(name, ptype) for name in args.files]
    if args.output == "json":
        stdout.write(json.dumps({"files": [c.as_dict() for c in checked]}, indent=2) + "\n")
    elif args.output == "sarif":
        stdout.write(json.dumps(_sarif(checked), indent=2) + "\n")
    else:
        for c in checked:
            _print_checked(c, stdout)
    bar = lint.Severity[args.fail_on.upper()].rank
    failed = any(not c.valid or any(f.severity.rank <= bar for _, f in c.findings) for c in checked)
    return 1 if failed else 0


YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class CheckedFile:
    """What `authz validate` found in one named file or bundle directory. Errors, warnings and findings carry
    the file they are in (for a bundle directory, one of its files; else the name as given)."""

    name: str
    valid: bool
    summary: str                                          # "valid identity policy", "valid bundle directory (...)"
    errors: list[tuple[str, Problem]]
    warnings: list[tuple[str, Problem]]
    findings: list[tuple[str, lint.Finding]]

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.name, "valid": self.valid, "summary": self.summary,
                "errors": [dict(p.as_dict(), file=f) for f, p in self.errors],
                "warnings": [dict(p.as_dict(), file=f) for f, p in self.warnings],
                "findings": [dict(x.as_dict(), file=f) for f, x in self.findings]}


def _check_file(name: str, ptype: PolicyType) -> CheckedFile:
    """Validate one named file (a policy, a bundle file or a bundle directory) and lint every valid policy in it."""
    path = Path(name)
    bundle_verdict = _validate_as_bundle(path)
    if bundle_verdict is not None:
        ok, line, docs = bundle_verdict
        if not ok:
            return CheckedFile(name, False, line, [(name, Problem("$", line.removeprefix("error: ")))], [], [])
        base = path if path.is_dir() else path.parent
        findings = [(str(base / source), f) for source, doc in docs for f in _lint_bundle_file(doc)]
        return CheckedFile(name, True, line, [], [], findings)
    try:
        text = path.read_bytes()
    except OSError as exc:
        return CheckedFile(name, False, f"cannot read: {exc.strerror}", [], [], [])
    if path.suffix.lower() in YAML_SUFFIXES:
        report = _validate_yaml(text, ptype)
    else:
        report = validate_document(text, ptype)
    if not report.valid:
        return CheckedFile(name, False, "invalid", [(name, p) for p in report.errors],
                           [(name, p) for p in report.warnings], [])
    found = lint.lint_document(report.document, ptype)
    # One message per place: a validator warning that a lint finding restates (same path) is left out.
    linted = {f.path for f in found}
    warnings = [(name, p) for p in report.warnings if p.path not in linted]
    return CheckedFile(name, True, f"valid {ptype.value} policy", [], warnings, [(name, f) for f in found])


def _lint_bundle_file(doc: Any) -> Iterator[lint.Finding]:
    """Lint every policy document of one bundle file (already loaded by the sidecar's loader), with paths that
    name its place in the file (`$.policies[0].document.Statement[0]`)."""
    for where, ptype, source in _bundle_policies(doc):
        report = validate_document(source, ptype)
        if report.valid:
            yield from (f.under(where) for f in lint.lint_document(report.document, ptype))


_INLINE_LISTS = {"user": "UserPolicyList", "group": "GroupPolicyList", "role": "RolePolicyList"}


def _bundle_policies(doc: Any) -> Iterator[tuple[str, PolicyType, Any]]:
    """(place, policy type, document) of every policy in effect in one bundle file, read from the loader's ops
    (so URL-encoded export documents arrive decoded): managed policies (their default version), inline
    policies, trust policies, stream and channel policies, SCPs and RCPs."""
    from .store.bundle import IAM_DETAIL_KEYS, ops_of_document

    export = bool(set(doc) & IAM_DETAIL_KEYS)
    for o in ops_of_document(doc, ""):
        where = o.get("_where", "$")
        if o["op"] == "CreatePolicy":
            if not export:
                yield f"{where}.document", PolicyType.IDENTITY, o.get("document")
            for k, (vid, version) in enumerate(o.get("versions") or []):
                if vid == o.get("default_version"):
                    yield f"{where}.PolicyVersionList[{k}].Document", PolicyType.IDENTITY, version
        elif o["op"] == "CreatePrincipal":
            if o.get("trust_policy") is not None:
                yield (f"{where}.AssumeRolePolicyDocument" if export else f"{where}.trust", PolicyType.TRUST,
                       o["trust_policy"])
            for k, (name, inline) in enumerate((o.get("inline") or {}).items()):
                place = (f"{where}.{_INLINE_LISTS[o['kind']]}[{k}].PolicyDocument" if export
                         else child_path(f"{where}.inline", name))
                yield place, PolicyType.IDENTITY, inline
        elif o["op"] == "RegisterResource" and o.get("policy") is not None:
            yield f"{where}.policy", PolicyType.RESOURCE, o["policy"]
        elif o["op"] == "SetOrganizationPolicies":
            for member, levels, ptype in (("scps", o.get("scp_levels"), PolicyType.SCP),
                                          ("rcps", o.get("rcp_levels"), PolicyType.RCP)):
                for i, level in enumerate(levels or []):
                    for j, policy in enumerate(level or []):
                        yield f"$.{member}[{i}][{j}]", ptype, policy


def _print_checked(c: CheckedFile, stdout: TextIO) -> None:
    if c.summary.startswith(("error: ", "cannot read: ")):   # a bundle that does not load, a file not read
        print(f"{c.name}: {c.summary}", file=stdout)
        return
    where = (lambda f: "" if f == c.name else f"{Path(f).name}: ")
    for f, p in c.errors:
        print(f"{c.name}: error: {where(f)}{p.path}: {p.message}", file=stdout)
    for f, p in c.warnings:
        print(f"{c.name}: warning: {where(f)}{p.path}: {p.message}", file=stdout)
    for f, x in c.findings:
        print(f"{c.name}: {x.severity.value.lower()}[{x.code}]: {where(f)}{x.path}: {x.message}; fix: {x.fix}",
              file=stdout)
    if c.valid:
        counts = [f"{len(c.warnings)} warnings"] if c.warnings else []
        by_severity = [f"{n} {s.value}" for s in lint.Severity
                       if (n := sum(1 for _, x in c.findings if x.severity is s))]
        counts += [f"findings: {', '.join(by_severity)}"] if by_severity else []
        print(f"{c.name}: {c.summary}" + (f" ({'; '.join(counts)})" if counts else ""), file=stdout)


def _sarif(checked: list[CheckedFile]) -> dict[str, Any]:
    """The SARIF log of a run: validation errors and lint findings, each at the line of its JSON path."""
    positions: dict[str, dict[str, tuple[int, int]]] = {}

    def at(file: str, path: str) -> tuple[int, int]:
        if file not in positions:
            positions[file] = {}
            p = Path(file)
            try:
                text = p.read_text(encoding="utf-8-sig") if p.is_file() else ""
            except (OSError, UnicodeDecodeError):
                text = ""
            if text:
                positions[file] = (lint.yaml_positions(text) if p.suffix.lower() in YAML_SUFFIXES
                                   else lint.json_positions(text))
        return lint.locate(positions[file], path)

    def uri(file: str) -> str:     # as named (relative to where the tool ran), or a file: URI when absolute
        p = Path(file)
        return p.as_uri() if p.is_absolute() else p.as_posix()

    invalid = [(uri(f), p.path, p.message, at(f, p.path)) for c in checked for f, p in c.errors]
    invalid += [(uri(c.name), "$", c.summary, (1, 1)) for c in checked if not c.valid and not c.errors]
    results = [(uri(f), x, at(f, x.path)) for c in checked for f, x in c.findings]
    return lint.sarif_log(results, __version__, invalid)


def _validate_as_bundle(path: Path) -> tuple[bool, str, list[tuple[str, Any]]] | None:
    """A bundle directory, or one bundle file (an `aws iam get-account-authorization-details` export or a
    hand-written file with `account`), loaded exactly as the sidecar loads it: (valid, the line to print, the
    parsed files by name). None for anything else, which is validated as one policy document."""
    from .store.bundle import BundleError, HAND_KEYS, IAM_DETAIL_KEYS, apply_documents, bundle_files, read_file
    from .store.errors import StoreError

    docs: list[tuple[str, Any]] = []
    try:
        if path.is_dir():
            docs = [(p.name, read_file(p)) for p in bundle_files(path)]      # load_bundle, keeping the files
            state, what = apply_documents(docs), "bundle directory"
        else:
            if not path.is_file() or path.suffix.lower() not in (".json", *YAML_SUFFIXES):
                return None
            try:
                doc = read_file(path)
            except (BundleError, OSError):
                return None         # not readable as a bundle file: the policy reader says why
            if not isinstance(doc, dict) or "Statement" in doc or not (
                    set(doc) & IAM_DETAIL_KEYS or ("account" in doc and set(doc) <= HAND_KEYS)):
                return None
            what = ("IAM authorization-details export" if set(doc) & IAM_DETAIL_KEYS else "bundle file")
            docs = [(path.name, doc)]
            state = apply_documents(docs)
    except StoreError as exc:      # BundleError names the file and the place in it
        return False, f"error: {exc}", []
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        # A member of the wrong shape that the loader does not check by name (the sidecar refuses it too).
        return (False, f"error: not a well-formed bundle: a member has the wrong type ({type(exc).__name__}: "
                       f"{exc})", [])
    except OSError as exc:
        return False, f"error: cannot read: {exc.strerror}", []
    counts = ", ".join(f"{n} {k}" for k, n in state.counts().items() if n)
    return True, f"valid {what}" + (f" ({counts})" if counts else ""), docs


def _validate_yaml(text: bytes, ptype: PolicyType) -> ValidationReport:
    """A YAML policy file: read strictly (a key given twice is an error with its line), then validated
    as the JSON document it stands for."""
    value, problems = load_yaml(text, max_chars=MAX_POLICY_TEXT_CHARS)
    if problems:
        return ValidationReport(tuple(problems), (), None)
    if not isinstance(value, dict):
        return ValidationReport((Problem("$", f"the document must be a mapping (Version, Statement); got "
                                              f"{kind_of(value)}"),), (), None)
    return validate_document(value, ptype)


# ------------------------------------------------------------------ test


TEST_FILE_KEYS = frozenset({"bundle", "tests"})
TEST_CASE_KEYS = ("name", "principal", "action", "resource", "context", "expect")
TEST_CASE_REQUIRED = ("principal", "action", "resource", "expect")
EXPECT_VALUES = tuple(d.value for d in Decision)


class CaseFileError(ValueError):
    """A test file that cannot be run as written; the message names the file and the place."""


@dataclass(frozen=True)
class CaseOutcome:
    """One test case run: what was expected, what came back, and why."""

    file: Path
    name: str
    expect: str
    got: str
    why: str


def _test_files(paths: Sequence[str]) -> Iterator[Path]:
    for name in paths:
        p = Path(name)
        if p.is_dir():
            yield from sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml", ".json") and x.is_file())
        else:
            yield p


def _read_test_file(path: Path) -> dict[str, Any]:
    """The test file's document, checked member by member; CaseFileError says what to fix."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CaseFileError(f"{path}: cannot read test file: {exc.strerror}") from None
    # Either reader refuses a member or key given twice (never 'last wins').
    if path.suffix.lower() == ".json":
        doc, problems = load_text(raw, iam_charset=False, max_chars=MAX_TEST_FILE_CHARS)
        doc = plain(doc)
    else:
        doc, problems = load_yaml(raw, max_chars=MAX_TEST_FILE_CHARS)
    if problems:
        raise CaseFileError(f"{path}: cannot read test file: {_line_error(problems)}")
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list) or "bundle" not in doc:
        raise CaseFileError(f"{path}: a test file has `bundle: DIR` (relative to the file) and `tests: [...]`")
    unknown = sorted(set(doc) - TEST_FILE_KEYS)
    if unknown:
        raise CaseFileError(f"{path}: unknown top-level key(s) {unknown}; allowed: {sorted(TEST_FILE_KEYS)}")
    for i, t in enumerate(doc["tests"]):
        where = f"{path}: tests[{i}]"
        if not isinstance(t, dict):
            raise CaseFileError(f"{where}: each test is a mapping of {', '.join(TEST_CASE_KEYS)}; got {kind_of(t)}")
        unknown = sorted(set(t) - set(TEST_CASE_KEYS))
        if unknown:
            raise CaseFileError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(TEST_CASE_KEYS)}")
        missing = [k for k in TEST_CASE_REQUIRED if k not in t]
        if missing:
            raise CaseFileError(f"{where}: missing key(s) {missing}; required: {', '.join(TEST_CASE_REQUIRED)}")
        for k in ("name", "principal", "action", "resource"):
            if k in t and not isinstance(t[k], str):
                raise CaseFileError(f"{where}.{k}: must be a string; got {kind_of(t[k])}")
        if t["expect"] not in EXPECT_VALUES:
            raise CaseFileError(f"{where}.expect: {t['expect']!r} is not a decision; use one of "
                                f"{', '.join(EXPECT_VALUES)}")
        if "context" in t and t["context"] is not None and not isinstance(t["context"], dict):
            raise CaseFileError(f"{where}.context: must be a mapping of key -> string or list of strings")
    return doc


def _why(result: Result) -> str:
    """The engine's own explanation of a decision, in one line."""
    if result.deciding:
        return "decided by " + "; ".join(
            f"{m.policy_type} policy {m.policy_name} statement {m.sid or '#' + str(m.index)} ({m.effect})"
            for m in result.deciding)
    notes = f"; notes: {', '.join(result.notes)}" if result.notes else ""
    blocked = f"; blocked by {result.blocked_by}" if result.blocked_by else ""
    return f"no statement allowed it ({result.decided_by}){blocked}{notes}"


def _run_test_file(path: Path, doc: dict[str, Any], name_filter: str) -> list[CaseOutcome]:
    from .store import Store, StoreConfig, StoreError

    store = Store(StoreConfig(bundle_dir=(path.parent / str(doc["bundle"])).resolve(), watch_interval=0,
                              cache_size=0))
    store.open()
    try:
        if not store.ready:
            raise CaseFileError(f"{path}: the bundle did not load: {store.status().last_load_error}")
        out = []
        for i, t in enumerate(doc["tests"]):
            name = t.get("name") or f"test {i}"
            if name_filter not in name:
                continue
            try:
                answer = store.authorize(t["principal"], t["action"], t["resource"], t.get("context") or {},
                                         explain=True)
                got, why = answer.result.decision.value, _why(answer.result)
            except (StoreError, AuthzError, ValueError) as exc:
                got, why = "error", str(exc)
            out.append(CaseOutcome(path, name, t["expect"], got, why))
        return out
    finally:
        store.close()


def _junit(outcomes: list[CaseOutcome], errors: list[str]) -> str:
    import xml.etree.ElementTree as ET

    failures = sum(1 for o in outcomes if o.got != o.expect)
    suite = ET.Element("testsuite", name="authz test", tests=str(len(outcomes) + len(errors)),
                       failures=str(failures), errors=str(len(errors)))
    for o in outcomes:
        case = ET.SubElement(suite, "testcase", classname=str(o.file), name=o.name)
        if o.got != o.expect:
            f = ET.SubElement(case, "failure", message=f"expected {o.expect}, got {o.got}")
            f.text = o.why
    for e in errors:
        case = ET.SubElement(suite, "testcase", classname="authz test", name=e.split(": ", 1)[0])
        ET.SubElement(case, "error", message=e)
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def cmd_test(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    """Run policy test files: each names a bundle and lists requests with expected decisions.
    Exit 0 when every case passes, 1 when one fails, 2 when a file cannot be run as written."""
    text = args.output == "text"
    outcomes: list[CaseOutcome] = []
    errors: list[str] = []
    for path in _test_files(args.paths):
        try:
            ran = _run_test_file(path, _read_test_file(path), args.filter)
        except CaseFileError as exc:
            errors.append(str(exc))
            # Text: with the results on stdout. JUnit: stdout is the XML (which holds it too).
            print(f"ERROR {exc}" if text else f"authz test: {exc}", file=stdout if text else sys.stderr)
            continue
        outcomes.extend(ran)
        if text:
            for o in ran:
                if o.got != o.expect:
                    print(f"FAIL {o.file}: {o.name}: expected {o.expect}, got {o.got}: {o.why}", file=stdout)
                elif args.verbose:
                    print(f"ok   {o.file}: {o.name}: {o.got}", file=stdout)
    failures = sum(1 for o in outcomes if o.got != o.expect)
    if text:
        print(f"{len(outcomes) - failures} passed, {failures} failed"
              + (f", {len(errors)} test file(s) could not run" if errors else ""), file=stdout)
    else:
        stdout.write(_junit(outcomes, errors))
    return 2 if errors else 1 if failures else 0


# ------------------------------------------------------------------ check / serve


def cmd_check(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    from google.protobuf.json_format import MessageToDict

    from .client import AuthzClient, CallError, TlsFiles, parse_context

    try:
        context = parse_context(args.context)
    except ValueError as exc:
        print(f"authz check: {exc}", file=sys.stderr)
        return 2
    if args.bundle is not None:
        online = [flag for flag, value in (("--addr", args.addr), ("--token", args.token), ("--tls-ca", args.tls_ca))
                  if value is not None]
        if online:
            print(f"authz check: --bundle answers offline, without a sidecar; drop {', '.join(online)} "
                  "(or drop --bundle to ask a running sidecar)", file=sys.stderr)
            return 2
        return _check_offline(args, context, stdout)
    tls = TlsFiles(ca=Path(args.tls_ca)) if args.tls_ca else None
    try:
        with AuthzClient(args.addr or DEFAULT_CHECK_ADDR, tls=tls, token=args.token, timeout=args.timeout) as client:
            answer = client.authorize(args.principal, args.action, args.resource, context, explain=args.explain)
    except CallError as exc:
        field = f" (field: {exc.field})" if exc.field else ""
        print(f"authz check: {exc.code.name}: {exc.message}{field}", file=sys.stderr)
        return 2
    stdout.write(json.dumps(MessageToDict(answer.proto, preserving_proto_field_name=True), indent=2) + "\n")
    return 0 if answer.allowed else 1


def _check_offline(args: argparse.Namespace, context: dict[str, str | list[str]], stdout: TextIO) -> int:
    """`authz check --bundle DIR`: the same question answered in-process by the store the sidecar
    runs, loaded from the bundle; the same JSON and exit status as the online form."""
    from google.protobuf.json_format import MessageToDict

    from .api import context_to_proto
    from .server.convert import context_from_proto, result_to_proto
    from .store import Store, StoreConfig
    from .v1 import authz_pb2 as pb

    bundle = Path(args.bundle)
    if not bundle.is_dir():
        print(f"authz check: --bundle {bundle}: not a directory (name a bundle directory)", file=sys.stderr)
        return 2
    store = Store(StoreConfig(bundle_dir=bundle.resolve(), watch_interval=0, cache_size=0))
    store.open()
    try:
        if not store.ready:
            print(f"authz check: --bundle {bundle}: the bundle did not load: {store.status().last_load_error}",
                  file=sys.stderr)
            return 2
        try:
            # Through the proto map and back, so that the context reads exactly as the sidecar reads it.
            answer = store.authorize(args.principal, args.action, args.resource,
                                     context_from_proto(context_to_proto(context)), explain=args.explain)
        except AuthzError as exc:
            print(f"authz check: INVALID_ARGUMENT: {exc}", file=sys.stderr)
            return 2
    finally:
        store.close()
    response = result_to_proto(answer.result, answer.revision, answer.cached, args.explain)
    stdout.write(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2) + "\n")
    return 0 if response.decision == pb.DECISION_ALLOW else 1


def watch_line(decision: Any, now: float) -> dict[str, Any]:
    """One `authz watch` line: the time (ISO-8601 UTC), the decision, its revision and the deciding statements."""
    from datetime import datetime, timezone

    return {"time": datetime.fromtimestamp(now, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "decision": WATCH_DECISIONS.get(decision.decision.name, decision.decision.name),
            "revision": decision.revision,
            "deciding_statements": [{"policy_type": m.policy_type, "policy_name": m.policy_name, "sid": m.sid,
                                     "index": m.index, "effect": m.effect} for m in decision.deciding_statements]}


WATCH_DECISIONS = {"ALLOW": "Allow", "EXPLICIT_DENY": "ExplicitDeny", "IMPLICIT_DENY": "ImplicitDeny",
                   "UNSPECIFIED": "Unspecified"}


def cmd_watch(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    """`authz watch`: one JSON line per decision as the sidecar pushes it; exit 0 when the stream ends OK (the
    watched session ended), 2 on an error, 130 on Ctrl-C (quietly)."""
    import time

    from .client import AuthzClient, CallError, TlsFiles, parse_context

    try:
        context = parse_context(args.context)
    except ValueError as exc:
        print(f"authz watch: {exc}", file=sys.stderr)
        return 2
    tls = TlsFiles(ca=Path(args.tls_ca)) if args.tls_ca else None
    try:
        with AuthzClient(args.addr or DEFAULT_CHECK_ADDR, tls=tls, token=args.token) as client:
            with client.watch(args.principal, args.action, args.resource, context,
                              access_key_id=args.access_key_id, resume=args.resume) as decisions:
                for decision in decisions:
                    stdout.write(json.dumps(watch_line(decision, time.time())) + "\n")
                    stdout.flush()
    except CallError as exc:
        field = f" (field: {exc.field})" if exc.field else ""
        print(f"authz watch: {exc.code.name}: {exc.message}{field}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_serve(argv: Sequence[str]) -> int:
    from .server.serve import main as serve_main

    return serve_main(list(argv), prog="authz serve")


# ------------------------------------------------------------------ push (fleet mode)


def cmd_push(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    """`authz push --store URL DIR`: validate the bundle as --bundle does and publish it to the fleet's store.
    Exit 0 published (or already held), 1 the bundle was refused (nothing published), 2 bad usage or no store."""
    import logging

    from .server.config import STORE_KEY_HOW, check_store_url, env_name, read_store_key
    from .store import Store, StoreConfig
    from .store.errors import StorageFailure, StoreError

    def fail(code: int, message: str) -> int:
        print(f"authz push: {message}", file=sys.stderr)
        return code

    url = (args.store or os.environ.get(env_name("--store")) or "").strip()
    if not url:
        return fail(2, f"--store URL is required (or {env_name('--store')}): the fleet's PostgreSQL store, e.g. "
                       "--store postgresql://authz@db.internal:5432/authz")
    key_file = args.store_key_file or os.environ.get(env_name("--store-key-file")) or None
    try:
        check_store_url(url)
        key = read_store_key(Path(key_file) if key_file else None)
    except ValueError as exc:
        return fail(2, str(exc))
    if key is None:
        return fail(2, f"the store key is required (it seals the secrets kept in the store): {STORE_KEY_HOW}")
    directory = Path(args.directory)
    # The store logs what a sidecar would (a refused load, a dropped connection); here the one line below says it.
    logging.getLogger("authz").addHandler(logging.NullHandler())
    store = Store(StoreConfig(store_url=url, store_key=key, watch_interval=0, cache_size=0))
    try:
        store.open(load=False)          # publishing needs the log, not a load of what the store holds
        from .analysis.diffing import no_new_access

        revision, written = store.publish_bundle(directory, no_new_access if args.require_no_new_access else None)
    except StorageFailure as exc:
        return fail(2, f"nothing was published: {exc}")
    except StoreError as exc:              # an invalid bundle (the file and the place), or a change it would undo
        return fail(1, f"nothing was published: {exc}")
    except (OSError, ValueError) as exc:
        return fail(1, f"nothing was published: cannot read the bundle: {exc}")
    except (AttributeError, TypeError, KeyError) as exc:
        return fail(1, f"nothing was published: not a well-formed bundle: a member has the wrong type "
                       f"({type(exc).__name__}: {exc})")
    finally:
        store.close()
    if not written:
        print(f"the store already holds this bundle: revision {revision}", file=stdout)
    else:
        print(f"published {directory} as revision {revision}", file=stdout)
    return 0


# ------------------------------------------------------------------ policy generate


def cmd_policy_generate(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    """`authz policy generate`: the least-privilege identity policy of a principal from a decision log.
    Exit 0 printed, 1 the log gives no policy (malformed line, empty, principal absent, over the quota), 2 bad
    usage (an unreadable file, a bad --since)."""
    from .analysis.generate import GenerateError, Generated, generate, parse_since, text_lines

    def fail(code: int, message: str) -> int:
        print(f"authz policy generate: {message}", file=sys.stderr)
        return code

    try:
        since = parse_since(args.since) if args.since is not None else None
    except GenerateError as exc:
        return fail(2, str(exc))
    source = "standard input" if args.decision_log == "-" else args.decision_log

    def run(raw: Iterable[bytes]) -> Generated:
        return generate(text_lines(raw, source), args.principal, since, size_kind=args.size_kind, split=args.split,
                        source=source)

    try:
        if args.decision_log == "-":
            buffer = getattr(stdin, "buffer", None)      # a test's StringIO has none
            generated = run(buffer if buffer is not None else (line.encode("utf-8") for line in stdin))
        else:
            with open(args.decision_log, "rb") as f:
                generated = run(f)
    except OSError as exc:
        return fail(2, f"cannot read {source}: {exc.strerror or exc}")
    except GenerateError as exc:
        return fail(1, str(exc))
    out: Any = list(generated.documents) if args.split else generated.documents[0]
    stdout.write(json.dumps(out, indent=2) + "\n")
    print(f"authz policy generate: {generated.summary(args.principal)}", file=sys.stderr)
    for note in generated.notes:
        print(f"authz policy generate: note: {note}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authz",
        description="AWS IAM policy evaluation for Kinesis Video Streams gateways: simulate and validate "
                    "policies offline, test policy sets in CI, query or run the sidecar.",
        epilog="Run `authz COMMAND --help` for the options of one command.")
    parser.add_argument("--version", action="version", version=f"authz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("simulate", help="evaluate JSON Lines cases from stdin (offline SimulateCustomPolicy)",
                       description="Reads one case per line on stdin (the format of conformance/decisions.jsonl: "
                                   "principal, action, resource, resourceAccount, context, identityPolicies, "
                                   "resourcePolicy, permissionBoundary, sessionPolicy, scpLevels, rcpLevels) and "
                                   "writes one line per case: {id, decision, matched, error}. A malformed case gets "
                                   "error set and decision null; order is kept.",
                       epilog="example: authz simulate --explain < cases.jsonl")
    p.add_argument("--explain", action="store_true",
                   help="add every matched statement and the explanation (decided by, per policy type, "
                        "missing context keys, notes)")

    p = sub.add_parser("validate", help="validate and lint policy files; exit 1 if any is invalid",
                       description="Prints every problem with its JSON path, then the lint findings of every valid "
                                   "policy (code, severity, path, fix; docs/lint.md). Exit status: 0 fine, 1 a file "
                                   "is invalid or has a finding at or above --fail-on, 2 bad usage.",
                       epilog="examples: authz validate --type identity policy.json\n"
                              "          authz validate --output sarif examples/bundle > authz.sarif\n"
                              "          authz validate --jsonl < validation.jsonl",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*",
                   help="policy documents (JSON or YAML); a bundle directory or an IAM authorization-details "
                        "export is loaded as the sidecar loads it, every policy in it validated")
    p.add_argument("--type", default="identity",
                   help="policy type: identity, resource, trust, boundary, session, scp, rcp (default identity)")
    p.add_argument("--jsonl", action="store_true",
                   help="read cases ({id, policyType, policy|policyText}) from stdin, write {id, valid, errors, "
                        "warnings, findings}")
    p.add_argument("--output", choices=("text", "json", "sarif"), default="text",
                   help="text (default), json (one document: files with errors, warnings, findings) or sarif "
                        "(SARIF 2.1.0, for code-scanning tools)")
    p.add_argument("--fail-on", choices=("error", "security_warning", "warning", "suggestion"), default="error",
                   help="exit 1 when a finding is at least this severe (default error; invalid files always fail)")

    p = sub.add_parser("test", help="run policy test files against a bundle; exit 1 on any failure",
                       description="Each test file (YAML or JSON) has `bundle: DIR` (relative to the file) and "
                                   "`tests: [{name, principal, action, resource, context, expect}]` with expect one "
                                   "of Allow, ExplicitDeny, ImplicitDeny. A failing case says which statements "
                                   "decided, or that none allowed it. Exit status: 0 all pass, 1 a case failed, "
                                   "2 a test file could not run (unreadable, an unknown or missing key, a bad "
                                   "expect, a bundle that does not load).",
                       epilog="example: authz test examples/tests")
    p.add_argument("paths", nargs="+", help="test files or directories of test files")
    p.add_argument("-v", "--verbose", action="store_true", help="also list passing tests")
    p.add_argument("-k", "--filter", default="", metavar="TEXT",
                   help="run only the cases whose name contains TEXT")
    p.add_argument("--output", choices=("text", "junit"), default="text",
                   help="text (default) or junit: JUnit XML on stdout, for CI test reports")

    p = sub.add_parser("check", help="ask a running sidecar for one decision; exit 0 only on Allow",
                       description="Prints the answer as JSON. Exit status: 0 Allow, 1 deny, 2 error. With "
                                   "--bundle DIR the answer comes from that bundle, offline.",
                       epilog="example: authz check --principal arn:aws:iam::123456789012:user/camera "
                              "--action kinesisvideo:PutMedia --resource "
                              "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012")
    p.add_argument("--addr", default=None, help=f"sidecar address (default {DEFAULT_CHECK_ADDR})")
    p.add_argument("--bundle", default=None, metavar="DIR",
                   help="answer offline from this bundle directory, without a running sidecar "
                        "(the store the sidecar runs, loaded in-process)")
    p.add_argument("--principal", required=True, help="caller ARN, or 'anonymous'")
    p.add_argument("--action", required=True, help="service:Action, e.g. kinesisvideo:GetMedia")
    p.add_argument("--resource", required=True, help="resource ARN, or '*'")
    p.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                   help="a condition key; repeat for more keys or for several values of one key")
    p.add_argument("--explain", action="store_true", help="ask for the full explanation")
    p.add_argument("--token", default=None, help="bearer token, if the listener requires one")
    p.add_argument("--tls-ca", default=None, help="CA bundle to verify a TLS listener (enables TLS)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")

    p = sub.add_parser("watch", help="follow one decision on a running sidecar: a JSON line each time it changes",
                       description="Opens a Watch on the sidecar and prints one JSON line per decision: the first is "
                                   "the current decision, then one each time it changes (an admin write, a bundle "
                                   "reload, a time condition's edge, the end of a role session): {time (ISO-8601 "
                                   "UTC), decision (Allow, ExplicitDeny, ImplicitDeny), revision, "
                                   "deciding_statements}. Give the decision listener's address: the sidecar "
                                   "redirects the watch to its streaming listener (--watch-listen). Exit status: 0 "
                                   "the stream ended OK (the watched session ended, after a final deny), 2 an error "
                                   "(the message says which), 130 Ctrl-C.",
                       epilog="example: authz watch --principal arn:aws:iam::123456789012:user/camera "
                              "--action kinesisvideo:PutMedia --resource "
                              "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012")
    p.add_argument("--addr", "--server", dest="addr", default=None,
                   help=f"sidecar address (default {DEFAULT_CHECK_ADDR})")
    p.add_argument("--principal", required=True, help="caller ARN, or 'anonymous'")
    p.add_argument("--action", required=True, help="service:Action, e.g. kinesisvideo:PutMedia")
    p.add_argument("--resource", required=True, help="resource ARN, or '*'")
    p.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                   help="a condition key, fixed for the watch's life; repeat for more keys or for several values")
    p.add_argument("--access-key-id", default="", metavar="ID",
                   help="the credential the caller signs with (a role session is resolved through it)")
    p.add_argument("--resume", type=int, default=0, metavar="N",
                   help="when the sidecar stops (UNAVAILABLE), reconnect up to N times in a row (default 0)")
    p.add_argument("--token", default=None, help="bearer token, if the listener requires one")
    p.add_argument("--tls-ca", default=None, help="CA bundle to verify a TLS listener (enables TLS)")

    sub.add_parser("serve", help="run the sidecar (same flags as server.py; see `authz serve --help`)",
                   add_help=False)

    p = sub.add_parser("push", help="publish a bundle to the fleet's store (fleet mode: authz serve --store URL)",
                       description="Loads and validates the bundle directory exactly as `authz serve --bundle` "
                                   "does (the same errors), checks that every change logged in the store (admin "
                                   "writes, access keys, sessions) still applies to it, and publishes it in one "
                                   "transaction as the fleet's new revision, which every sidecar on the store "
                                   "then serves. Prints the revision. A bundle that is refused publishes nothing. "
                                   "The store key comes from --store-key-file or AUTHZ_STORE_KEY (base64; the same "
                                   "key every sidecar of the fleet has). Exit status: 0 published (or the store "
                                   "already held this bundle), 1 the bundle was refused, 2 bad usage or the store "
                                   "is unreachable.",
                       epilog="example: AUTHZ_STORE_KEY=$(cat /run/secrets/authz-store-key) authz push "
                              "--store postgresql://authz@db.internal:5432/authz examples/bundle")
    p.add_argument("directory", metavar="DIR", help="the bundle directory (as for authz serve --bundle)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="the fleet's PostgreSQL store, as for authz serve --store (default: AUTHZ_STORE)")
    p.add_argument("--store-key-file", default=None, metavar="PATH",
                   help="file holding the store key (base64); default: AUTHZ_STORE_KEY_FILE, else the key itself "
                        "in AUTHZ_STORE_KEY")
    p.add_argument("--require-no-new-access", action="store_true",
                   help="refuse the bundle (exit 1, nothing published) when it allows any (principal, action, "
                        "resource) that the state the store holds does not (authz access diff; docs/analysis.md)")

    p = sub.add_parser("policy", help="policy tools: generate (a least-privilege policy from a decision log)",
                       description="Policy tools. `authz policy generate --help` for the one command.")
    policy_sub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    p = policy_sub.add_parser(
        "generate", help="a least-privilege identity policy from the decisions a principal was allowed",
        description="Reads a decision log (a sidecar's --decision-log file; '-' for standard input) and prints, "
                    "as JSON, an identity policy that allows exactly the (action, resource) pairs the principal "
                    "was allowed, from --since on. Generalised in one way only: a stream or channel ARN's "
                    "creation-time suffix becomes '*' (the stream's name stays listed); actions allowed on the "
                    "same resources share a statement. For a role ARN, the decisions of its sessions "
                    "(assumed-role/NAME/...) are read. The policy is valid under `authz validate`, its size quota "
                    "(--size-kind) included; one over the quota is refused unless --split, which prints a JSON "
                    "array of policies that each fit. A summary goes to standard error. Exit status: 0 printed, "
                    "1 the log gives no policy (a malformed line, named by number; an empty log; a principal "
                    "not in it or never allowed; over the quota), 2 bad usage.",
        epilog="example: authz policy generate --decision-log /var/log/authz/decisions.jsonl "
               "--principal arn:aws:iam::123456789012:user/camera --since 2026-01-01T00:00:00Z > camera-policy.json")
    p.add_argument("--decision-log", required=True, metavar="FILE",
                   help="the decision log (one JSON object per line, as --decision-log writes it); '-': stdin")
    p.add_argument("--principal", required=True, metavar="ARN",
                   help="the principal whose allowed requests the policy should cover (a user, a role's "
                        "sessions through the role ARN, or one session ARN)")
    p.add_argument("--since", default=None, metavar="T",
                   help="only decisions at or after T: epoch seconds or ISO 8601 (a time without offset is UTC)")
    p.add_argument("--size-kind", choices=("managed", "inline-role", "inline-group", "inline-user"),
                   default="managed",
                   help="the identity-policy quota to fit: managed (6,144 characters; the default), inline-role "
                        "(10,240), inline-group (5,120), inline-user (2,048)")
    p.add_argument("--split", action="store_true",
                   help="print a JSON array of policies, each within the quota, instead of refusing a policy "
                        "over it")
    from .analysis.report import add_parser as add_access_parser

    add_access_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    try:
        return _main(argv, stdin, stdout)
    except BrokenPipeError:   # e.g. `authz simulate < cases | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


def _main(argv: Sequence[str] | None, stdin: TextIO | None, stdout: TextIO | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if argv and argv[0] == "serve":
        return cmd_serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "simulate":
        return cmd_simulate(args, stdin, stdout)
    if args.command == "validate":
        try:
            return cmd_validate(args, stdin, stdout)
        except ValueError as exc:
            print(f"authz validate: {exc}", file=sys.stderr)
            return 2
    if args.command == "test":
        return cmd_test(args, stdin, stdout)
    if args.command == "check":
        return cmd_check(args, stdin, stdout)
    if args.command == "watch":
        return cmd_watch(args, stdin, stdout)
    if args.command == "push":
        return cmd_push(args, stdin, stdout)
    if args.command == "policy":
        if args.policy_command == "generate":
            return cmd_policy_generate(args, stdin, stdout)
        print("authz policy: name a subcommand: generate (authz policy generate --help)", file=sys.stderr)
        return 2
    if args.command == "access":
        from .analysis.report import run as run_access

        return run_access(args, stdout)
    parser.print_help(stdout)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
