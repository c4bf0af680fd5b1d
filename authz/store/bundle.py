"""Bundle directories: IAM `get-account-authorization-details` JSON and hand-written JSON/YAML files, turned into ops.

A bundle is read whole into op records (see ops.py; each also carries `_where`, its place in the
file, for error messages) and applied to an empty state, so a bundle file and an admin call that say
the same thing go through the same code.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..policy.arn import account_of
from ..policy.jsontext import child_path, load_large
from ..policy.yamltext import load_yaml
from .errors import AlreadyExists, InvalidInput, StoreError
from .ops import apply_op
from .state import IamState, freeze, transaction

BUNDLE_SUFFIXES = (".json", ".yaml", ".yml")
MAX_BUNDLE_FILE_BYTES = 256 * 1024 * 1024
MAX_BUNDLE_FILES = 10_000
IAM_DETAIL_KEYS = frozenset({"UserDetailList", "GroupDetailList", "RoleDetailList", "Policies"})
ACCESS_KEY_MEMBERS = {"id", "secret", "status"}     # status: Active (the default) or Inactive, as IAM's
# A top-level `access_keys` entry names its user: it gives signing keys to users declared elsewhere in
# the bundle, such as those of an IAM authorization-details export (which carries no keys or secrets).
USER_ACCESS_KEY_MEMBERS = ACCESS_KEY_MEMBERS | {"user"}
HAND_KEYS = frozenset({"account", "policies", "users", "groups", "roles", "streams", "channels", "scps", "rcps",
                       "region", "organization", "access_keys"})


class BundleError(StoreError):
    """A bundle file cannot be used; the message names the file and the place in it."""


@dataclass(frozen=True)
class BundleSignature:
    """What the watcher compares to notice a change: names, sizes and modification times."""

    entries: tuple[tuple[str, int, int], ...]
    missing: bool = False


def bundle_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist or is not a directory")
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and p.suffix.lower() in BUNDLE_SUFFIXES and not p.name.startswith("."))
    if len(files) > MAX_BUNDLE_FILES:
        raise BundleError(f"bundle directory {directory} has {len(files)} files; the limit is {MAX_BUNDLE_FILES}")
    return files


def signature(directory: Path) -> BundleSignature:
    try:
        files = bundle_files(directory)
        entries = []
        for p in files:
            st = p.stat()
            entries.append((p.name, st.st_size, st.st_mtime_ns))
        return BundleSignature(tuple(entries))
    except (OSError, BundleError):
        return BundleSignature((), missing=True)


def read_file(path: Path) -> Any:
    """Parse one bundle file strictly, JSON or YAML: a member or key given twice is an error naming where."""
    size = path.stat().st_size
    if size > MAX_BUNDLE_FILE_BYTES:
        raise BundleError(f"{path.name}: {size} bytes is over the {MAX_BUNDLE_FILE_BYTES}-byte limit per file")
    raw = path.read_bytes()
    if path.suffix.lower() == ".json":
        value, problems = load_large(raw, max_chars=MAX_BUNDLE_FILE_BYTES)
        if problems:
            raise BundleError(f"{path.name}: " + "; ".join(str(p) for p in problems[:5]))
        return value
    value, problems = load_yaml(raw, max_chars=MAX_BUNDLE_FILE_BYTES)
    if problems:
        raise BundleError(f"{path.name}: " + "; ".join(p.message for p in problems[:5]))
    return value


def load_bundle(directory: Path) -> IamState:
    """Read every file of the bundle and build the state; raises BundleError naming the first fault."""
    docs = [(path.name, read_file(path)) for path in bundle_files(directory)]
    return apply_documents(docs)


def apply_documents(docs: list[tuple[str, Any]]) -> IamState:
    """Build a state from parsed bundle files. Creation comes before reference: ops are applied
    phase by phase (then in file order), generated afresh for each phase so that the ops of a
    large bundle never all exist at once. Built in one transaction, the state's tables become
    persistent maps once at the end (state.freeze)."""
    state = IamState()
    with transaction():
        for phase in range(_PHASES):
            for source, doc in docs:
                for o in ops_of_document(doc, source):
                    if _phase(o) != phase:
                        continue
                    try:
                        state = apply_op(state, o)
                    except StoreError as exc:
                        where = o.get("_where", "")
                        hint = ""
                        if isinstance(exc, AlreadyExists) and o["op"] == "CreatePrincipal" and o.get("kind") == "user":
                            hint = ("; to give a user declared in another file (e.g. an IAM export) signing keys, "
                                    "list them in a top-level `access_keys: [{user, id, secret}]` member instead")
                        raise BundleError(f"{source}{': ' + where if where else ''}: {exc}{hint}") from None
    return freeze(state)


_PHASES = 5


def _phase(o: dict[str, Any]) -> int:
    name = o["op"]
    if name == "CreateAccount":
        return 0
    if name in ("CreatePolicy", "SetOrganizationPolicies"):
        return 1
    if name == "CreatePrincipal":
        return 2 if o.get("kind") == "group" else 3     # users name their groups
    return 4                                            # access keys, resources


def ops_of_document(doc: Any, source: str) -> Iterator[dict[str, Any]]:
    if not isinstance(doc, dict):
        raise BundleError(f"{source}: the top level must be an object")
    keys = set(doc)
    if keys & IAM_DETAIL_KEYS:
        yield from _iam_details_ops(doc, source)
    elif "account" in keys:
        unknown = keys - HAND_KEYS
        if unknown:
            raise BundleError(f"{source}: unknown top-level member(s) {sorted(unknown)}; expected some of "
                              f"{sorted(HAND_KEYS)}")
        yield from _hand_ops(doc, source)
    else:
        raise BundleError(f"{source}: not a bundle file: expected the output of `aws iam "
                          "get-account-authorization-details` (UserDetailList, ...) or a hand-written file with "
                          "an `account` member")


# ------------------------------------------------------------------ aws iam get-account-authorization-details


def _doc(value: Any) -> Any:
    """Policy documents come as objects or as URL-encoded JSON strings."""
    if isinstance(value, str):
        text = urllib.parse.unquote(value) if "%7B" in value[:8].upper() or value.startswith("%") else value
        return text
    return value


def _iam_details_ops(doc: dict[str, Any], source: str) -> Iterator[dict[str, Any]]:
    accounts: set[str] = set()
    for lst in ("UserDetailList", "GroupDetailList", "RoleDetailList"):
        for e in doc.get(lst) or []:
            accounts.add(account_of(e.get("Arn", "")))
    for p in doc.get("Policies") or []:
        a = account_of(p.get("Arn", ""))
        if a != "aws":
            accounts.add(a)
    accounts.discard("")
    for a in sorted(accounts):
        yield {"op": "CreateAccount", "account": a}
    for i, p in enumerate(doc.get("Policies") or []):
        where = child_path("$.Policies", i)
        versions = [(v.get("VersionId"), _doc(v.get("Document"))) for v in p.get("PolicyVersionList") or []]
        default = p.get("DefaultVersionId") or next((v.get("VersionId") for v in p.get("PolicyVersionList") or []
                                                       if v.get("IsDefaultVersion")), None)
        yield {"op": "CreatePolicy", "account": account_of(p.get("Arn", "")), "name": p.get("PolicyName"),
               "path": p.get("Path", "/"), "arn": p.get("Arn"), "versions": versions, "default_version": default,
               "_where": where}
    for kind, lst, name_key, inline_key in (("group", "GroupDetailList", "GroupName", "GroupPolicyList"),
                                            ("user", "UserDetailList", "UserName", "UserPolicyList"),
                                            ("role", "RoleDetailList", "RoleName", "RolePolicyList")):
        for i, e in enumerate(doc.get(lst) or []):
            where = child_path(f"$.{lst}", i)
            account = account_of(e.get("Arn", ""))
            name = e.get(name_key)
            id_key = {"user": "UserId", "group": "GroupId", "role": "RoleId"}[kind]
            create: dict[str, Any] = {"op": "CreatePrincipal", "kind": kind, "account": account, "name": name,
                                      "path": e.get("Path", "/"), "unique_id": e.get(id_key), "_where": where,
                                      "tags": {t["Key"]: t["Value"] for t in e.get("Tags") or []}}
            if kind == "role":
                create["trust_policy"] = _doc(e.get("AssumeRolePolicyDocument"))
                create["max_session_duration"] = e.get("MaxSessionDuration") or 3600
            create["inline"] = {pol.get("PolicyName"): _doc(pol.get("PolicyDocument"))
                                for pol in e.get(inline_key) or []}
            create["attached"] = [att.get("PolicyArn") for att in e.get("AttachedManagedPolicies") or []]
            create["boundary"] = (e.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
            create["groups"] = list(e.get("GroupList") or []) if kind == "user" else []
            yield create


# ------------------------------------------------------------------ hand-written files


def _policy_ref(account: str, ref: Any) -> Any:
    if isinstance(ref, str) and not ref.startswith("arn:"):
        return f"arn:aws:iam::{account}:policy/{ref}"
    return ref


def _hand_ops(doc: dict[str, Any], source: str) -> Iterator[dict[str, Any]]:
    raw_account = doc.get("account")
    account = f"{raw_account:012d}" if isinstance(raw_account, int) else str(raw_account)
    yield {"op": "CreateAccount", "account": account, "_where": "$.account"}
    default_region = doc.get("region", "us-east-1")
    for i, p in enumerate(doc.get("policies") or []):
        where = child_path("$.policies", i)
        _only(p, {"name", "path", "document", "description"}, where, source)
        yield {"op": "CreatePolicy", "account": account, "name": p.get("name"), "path": p.get("path", "/"),
               "document": p.get("document"), "description": p.get("description", ""), "_where": where}
    org = doc.get("organization")
    if doc.get("scps") is not None or doc.get("rcps") is not None or org is not None:
        if org is not None:
            _only(org, {"id", "paths"}, "$.organization", source)
        yield {"op": "SetOrganizationPolicies", "account": account, "scp_levels": doc.get("scps"),
               "rcp_levels": doc.get("rcps"), "org_id": (org or {}).get("id"), "org_paths": (org or {}).get("paths"),
               "_where": "$.organization" if org is not None else "$.scps"}
    for kind, member in (("group", "groups"), ("user", "users"), ("role", "roles")):
        allowed = {"name", "path", "policies", "inline", "tags"}
        if kind == "user":
            allowed |= {"groups", "boundary", "access_keys"}
        if kind == "role":
            allowed |= {"trust", "boundary", "max_session_duration"}
        for i, e in enumerate(doc.get(member) or []):
            where = child_path(f"$.{member}", i)
            _only(e, allowed, where, source)
            create: dict[str, Any] = {"op": "CreatePrincipal", "kind": kind, "account": account,
                                      "name": e.get("name"), "path": e.get("path", "/"), "tags": e.get("tags") or {},
                                      "_where": where}
            if kind == "role":
                create["trust_policy"] = e.get("trust")
                create["max_session_duration"] = e.get("max_session_duration") or 3600
            create["inline"] = e.get("inline") or {}
            create["attached"] = [_policy_ref(account, pol) for pol in e.get("policies") or []]
            create["boundary"] = _policy_ref(account, e["boundary"]) if e.get("boundary") else None
            create["groups"] = list(e.get("groups") or [])
            yield create
            keys = e.get("access_keys") or []
            if not isinstance(keys, list):
                raise BundleError(f"{source}: {where}.access_keys: expected a list of {{id, secret, status}} objects")
            for j, k in enumerate(keys):
                key_where = child_path(f"{where}.access_keys", j)
                _only(k, ACCESS_KEY_MEMBERS, key_where, source)
                yield _key_op(account, e.get("name"), k, key_where)
    keys = doc.get("access_keys") or []
    if not isinstance(keys, list):
        raise BundleError(f"{source}: $.access_keys: expected a list of {{user, id, secret, status}} objects")
    for j, k in enumerate(keys):
        key_where = child_path("$.access_keys", j)
        _only(k, USER_ACCESS_KEY_MEMBERS, key_where, source)
        if not isinstance(k.get("user"), str):
            raise BundleError(f"{source}: {key_where}.user: the name of a user of account {account} declared in "
                              "this bundle (in any file, e.g. an IAM authorization-details export)")
        yield _key_op(account, k["user"], k, key_where)
    for rtype, member in (("stream", "streams"), ("channel", "channels")):
        for i, r in enumerate(doc.get(member) or []):
            where = child_path(f"$.{member}", i)
            _only(r, {"name", "region", "arn", "tags", "policy", "created"}, where, source)
            arn = r.get("arn")
            if not arn:
                region = r.get("region", default_region)
                created = int(r.get("created", 0)) or _stable_creation(account, region, rtype, str(r.get("name")))
                arn = f"arn:aws:kinesisvideo:{region}:{account}:{rtype}/{r.get('name')}/{created}"
            yield {"op": "RegisterResource", "type": rtype, "arn": arn, "tags": r.get("tags") or {},
                   "policy": r.get("policy"), "_where": where}


def _key_op(account: str, user: Any, key: dict[str, Any], where: str) -> dict[str, Any]:
    return {"op": "CreateAccessKey", "account": account, "user": user, "id": key.get("id"),
            "secret": key.get("secret"), "status": key.get("status", "Active"), "_where": where}


def _stable_creation(account: str, region: str, rtype: str, name: str) -> int:
    """A creation-time suffix for resources declared without an ARN: stable across reloads."""
    import hashlib
    h = int.from_bytes(hashlib.sha256(f"{account}/{region}/{rtype}/{name}".encode()).digest()[:4], "big")
    return 1_600_000_000_000 + h


def _only(entry: Any, allowed: set[str], where: str, source: str) -> None:
    if not isinstance(entry, dict):
        raise BundleError(f"{source}: {where}: expected an object")
    unknown = set(entry) - allowed
    if unknown:
        raise BundleError(f"{source}: {where}: unknown member(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def dump_example(path: Path, doc: dict[str, Any]) -> None:
    """Write a hand-written bundle file (used by tests and the benchmark fixtures)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


__all__ = ["BundleError", "BundleSignature", "load_bundle", "signature", "bundle_files", "apply_documents",
           "ops_of_document", "InvalidInput"]
