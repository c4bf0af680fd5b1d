"""The IAM state as immutable records, and the operations that derive a new state from an old one.

Every change, whether it comes from a bundle file, the admin API or AssumeRole, is an *op*: a
plain JSON-able dict applied by `apply_op`. Ops carry every generated value (ids, secrets,
timestamps), so replaying the persisted op log rebuilds exactly the acknowledged state.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from ..policy import limits
from ..policy.model import PolicyType
from ..policy.validate import ValidatorOptions, validate_document
from .errors import AlreadyExists, Conflict, InvalidInput, NotFound, QuotaExceeded

ACCOUNT_ID = re.compile(r"^\d{12}$")
NAME_USER_ROLE = re.compile(r"^[\w+=,.@-]{1,64}$")
NAME_GROUP_POLICY = re.compile(r"^[\w+=,.@-]{1,128}$")
INLINE_POLICY_NAME = re.compile(r"^[^\\/*?\s]{1,128}$")
PATH_RE = re.compile(r"^(/|/[\x21-\x7e]*/)$")
RESOURCE_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,256}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
TAG_KEY = re.compile(r"^[\w\s.:/=+\-@]{1,128}$", re.UNICODE)
TAG_VALUE = re.compile(r"^[\w\s.:/=+\-@]{0,256}$", re.UNICODE)
MAX_RESOURCE_TAGS = 50
MAX_ACCESS_KEYS_PER_USER = 2           # IAM's quota


# ------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class ManagedPolicy:
    arn: str
    name: str
    path: str
    versions: tuple[tuple[str, str], ...]     # (version id, document text), oldest first
    default_version: str
    description: str = ""

    @property
    def document(self) -> str:
        for vid, doc in self.versions:
            if vid == self.default_version:
                return doc
        return self.versions[-1][1]  # pragma: no cover - default always exists


@dataclass(frozen=True, slots=True)
class Principal:
    """A user, group or role."""

    kind: str                                   # user | group | role
    account: str
    name: str
    path: str
    arn: str
    unique_id: str
    inline: tuple[tuple[str, str], ...] = ()    # (policy name, document text)
    attached: tuple[str, ...] = ()              # managed policy ARNs
    boundary: str | None = None                 # managed policy ARN (users and roles)
    tags: tuple[tuple[str, str], ...] = ()
    groups: tuple[str, ...] = ()                # users: group names
    trust: str | None = None                    # roles: trust policy text
    max_session: int = limits.DEFAULT_SESSION_SECONDS


@dataclass(frozen=True, slots=True)
class Resource:
    arn: str
    type: str                                   # stream | channel
    name: str
    partition: str
    region: str
    account: str
    tags: tuple[tuple[str, str], ...] = ()
    policy: str | None = None                   # emulated resource policy (spec 3)


@dataclass(frozen=True, slots=True)
class AccessKey:
    id: str
    secret: str
    principal: str                              # user ARN or session ARN
    session_token: str | None = None
    expires: float | None = None                # unix seconds


@dataclass(frozen=True, slots=True)
class Session:
    arn: str                                    # arn:aws:sts::ACCT:assumed-role/ROLE/SESSION
    role_arn: str
    role_id: str
    name: str
    issued: float
    expires: float
    policy: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    access_key: str = ""
    source: str = ""                            # the caller that assumed the role


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    users: Mapping[str, Principal] = field(default_factory=dict)    # keyed by lower-cased name
    groups: Mapping[str, Principal] = field(default_factory=dict)
    roles: Mapping[str, Principal] = field(default_factory=dict)
    scp_levels: tuple[tuple[str, ...], ...] | None = None          # policy texts, root level first
    rcp_levels: tuple[tuple[str, ...], ...] | None = None

    def table(self, kind: str) -> Mapping[str, Principal]:
        return {"user": self.users, "group": self.groups, "role": self.roles}[kind]


@dataclass(frozen=True, slots=True)
class IamState:
    accounts: Mapping[str, Account] = field(default_factory=dict)
    policies: Mapping[str, ManagedPolicy] = field(default_factory=dict)      # by ARN
    resources: Mapping[str, Resource] = field(default_factory=dict)          # by ARN
    resource_names: Mapping[tuple[str, str, str, str, str], str] = field(default_factory=dict)
    access_keys: Mapping[str, AccessKey] = field(default_factory=dict)
    sessions: Mapping[str, Session] = field(default_factory=dict)
    user_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)    # user ARN -> its access key ids

    def counts(self) -> dict[str, int]:
        return {
            "accounts": len(self.accounts),
            "users": sum(len(a.users) for a in self.accounts.values()),
            "groups": sum(len(a.groups) for a in self.accounts.values()),
            "roles": sum(len(a.roles) for a in self.accounts.values()),
            "policies": len(self.policies),
            "resources": len(self.resources),
            "access_keys": len(self.access_keys),
            "sessions": len(self.sessions),
        }


def evolve(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace without its per-call introspection (a hot spot when loading bundles)."""
    cls = type(obj)
    return cls(*[changes[f] if f in changes else getattr(obj, f) for f in cls.__match_args__])


# ------------------------------------------------------------------ identifiers


def stable_id(prefix: str, seed: str) -> str:
    """An IAM-style unique id derived from the entity's ARN, stable across reloads."""
    digest = base64.b32encode(hashlib.sha256(seed.encode()).digest()).decode()
    return prefix + digest[:17]


def principal_arn(kind: str, account: str, path: str, name: str, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account}:{kind}{path}{name}"


def policy_arn(account: str, path: str, name: str) -> str:
    return f"arn:aws:iam::{account}:policy{path}{name}"


def account_of_arn(arn: str) -> str:
    f = arn.split(":", 5)
    return f[4] if len(f) == 6 else ""


# ------------------------------------------------------------------ checks


def check_account(account: Any, field_name: str = "account") -> str:
    if not isinstance(account, str) or not ACCOUNT_ID.match(account):
        raise InvalidInput(f"{field_name} must be a 12-digit AWS account id, got {account!r}", field_name)
    return account


def check_name(kind: str, name: Any, field_name: str = "name") -> str:
    pattern = NAME_USER_ROLE if kind in ("user", "role") else NAME_GROUP_POLICY
    limit = limits.MAX_USER_OR_ROLE_NAME if kind in ("user", "role") else limits.MAX_GROUP_OR_POLICY_NAME
    if not isinstance(name, str) or not pattern.match(name):
        raise InvalidInput(f"{field_name}: a {kind} name is 1-{limit} characters of letters, digits and "
                           f"+=,.@_- ; got {name!r}", field_name)
    return name


def check_path(path: Any, field_name: str = "path") -> str:
    if path in (None, ""):
        return "/"
    if not isinstance(path, str) or len(path) > limits.MAX_PATH_CHARS or not PATH_RE.match(path):
        raise InvalidInput(f"{field_name}: a path starts and ends with '/' and is at most {limits.MAX_PATH_CHARS} "
                           f"printable ASCII characters; got {path!r}", field_name)
    return path


def check_tags(tags: Mapping[str, str], field_name: str = "tags", max_count: int = limits.MAX_TAGS_PER_PRINCIPAL
               ) -> tuple[tuple[str, str], ...]:
    if len(tags) > max_count:
        raise QuotaExceeded(f"{field_name}: at most {max_count} tags, got {len(tags)}", field_name)
    seen: set[str] = set()
    for k, v in tags.items():
        if not isinstance(k, str) or not TAG_KEY.match(k):
            raise InvalidInput(f"{field_name}: tag key {k!r} must be 1-{limits.MAX_TAG_KEY_CHARS} characters of "
                               "letters, digits, white space and _.:/=+-@", field_name)
        if not isinstance(v, str) or not TAG_VALUE.match(v):
            raise InvalidInput(f"{field_name}: value of tag {k!r} must be 0-{limits.MAX_TAG_VALUE_CHARS} characters "
                               "of letters, digits, white space and _.:/=+-@", field_name)
        if k.lower() in seen:
            raise InvalidInput(f"{field_name}: tag keys are case-insensitive; {k!r} appears twice", field_name)
        seen.add(k.lower())
    return tuple(tags.items())


def check_policy(document: Any, policy_type: PolicyType, field_name: str, size_kind: str | None = None) -> str:
    """Validate a policy document; returns its text. Raises InvalidInput naming every problem."""
    if isinstance(document, Mapping):
        document = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    if not isinstance(document, str) or not document.strip():
        raise InvalidInput(f"{field_name}: a policy document (JSON text) is required", field_name)
    report = validate_document(document, policy_type, options=ValidatorOptions(size_kind=size_kind))
    if not report.valid:
        detail = "; ".join(str(p) for p in report.errors[:5])
        more = f" (+{len(report.errors) - 5} more)" if len(report.errors) > 5 else ""
        raise InvalidInput(f"{field_name}: invalid {policy_type.value} policy: {detail}{more}", field_name,
                           report.errors)
    return document


# ------------------------------------------------------------------ operations

Apply = Callable[[IamState, dict[str, Any]], IamState]
_OPS: dict[str, Apply] = {}

# Copy-on-first-write: within one transaction every table is copied at most once, so loading a
# bundle of 100,000 users costs 100,000 inserts, not 100,000 copies of a growing table. Tables of
# the state a transaction started from are never modified: snapshots being served stay intact.
_TXN: ContextVar["set[int] | None"] = ContextVar("iam_state_txn", default=None)


@contextmanager
def transaction() -> Iterator[None]:
    """Group several apply_op calls; tables created inside it are mutated in place."""
    if _TXN.get() is not None:
        yield
        return
    token = _TXN.set(set())
    try:
        yield
    finally:
        _TXN.reset(token)


def _own(table: Mapping[Any, Any]) -> dict[Any, Any]:
    """A table this transaction may modify: the table itself if the transaction made it, else a copy."""
    owned = _TXN.get()
    if owned is not None and id(table) in owned:
        return table  # type: ignore[return-value]
    copy = dict(table)
    if owned is not None:
        owned.add(id(copy))
    return copy


def op(name: str) -> Callable[[Apply], Apply]:
    def register(fn: Apply) -> Apply:
        _OPS[name] = fn
        return fn
    return register


def apply_op(state: IamState, operation: Mapping[str, Any]) -> IamState:
    """The state after one operation; raises a StoreError and leaves `state` untouched on failure.

    Every op checks all its input before it modifies a table, so a failing op changes nothing even
    inside a transaction (where tables are modified in place).
    """
    name = operation.get("op")
    fn = _OPS.get(name) if isinstance(name, str) else None
    if fn is None:
        raise InvalidInput(f"unknown operation {name!r}", "op")
    return fn(state, dict(operation))


def op_names() -> tuple[str, ...]:
    return tuple(sorted(_OPS))


def _account(state: IamState, account: str, create: bool = False) -> Account:
    acct = state.accounts.get(account)
    if acct is None:
        if not create:
            raise NotFound(f"account {account} is not loaded", "account")
        acct = Account(account)
    return acct


def _ensure_account(state: IamState, account: str) -> IamState:
    """The state with `account` present (an empty one is added when the account is new)."""
    return state if account in state.accounts else _with_account(state, Account(account))


def _with_account(state: IamState, acct: Account) -> IamState:
    accounts = _own(state.accounts)
    accounts[acct.id] = acct
    return evolve(state, accounts=accounts)


def _get_principal(state: IamState, account: str, kind: str, name: str) -> Principal:
    if kind not in ("user", "group", "role"):
        raise InvalidInput(f"principal.kind must be user, group or role; got {kind!r}", "principal.kind")
    acct = _account(state, account)
    p = acct.table(kind).get(name.lower())
    if p is None or p.name != name:
        raise NotFound(f"{kind} {name!r} does not exist in account {account}", "principal.name")
    return p


def _put_principal(state: IamState, p: Principal) -> IamState:
    acct = _account(state, p.account, create=True)
    table = _own(acct.table(p.kind))
    table[p.name.lower()] = p
    changes: dict[str, Any] = {{"user": "users", "group": "groups", "role": "roles"}[p.kind]: table}
    return _with_account(state, evolve(acct, **changes))


def _limit_attached(p: Principal, extra: int = 1) -> None:
    cap = {"user": limits.MAX_MANAGED_POLICIES_PER_USER, "group": limits.MAX_MANAGED_POLICIES_PER_GROUP,
           "role": limits.MAX_MANAGED_POLICIES_PER_ROLE}[p.kind]
    if len(p.attached) + extra > cap:
        raise QuotaExceeded(f"a {p.kind} can have at most {cap} managed policies attached; {p.arn} has "
                            f"{len(p.attached)}", "policy_arn")


def _inline_size_kind(kind: str) -> str:
    return {"user": "inline-user", "group": "inline-group", "role": "inline-role"}[kind]


@op("CreateAccount")
def _create_account(state: IamState, o: dict[str, Any]) -> IamState:
    account = check_account(o.get("account"))
    if account in state.accounts:
        return state
    return _with_account(state, Account(account))


@op("SetOrganizationPolicies")
def _set_org(state: IamState, o: dict[str, Any]) -> IamState:
    account = check_account(o.get("account"))
    acct = _account(state, account, create=True)
    levels: dict[str, Any] = {}
    for kind, ptype in (("scp_levels", PolicyType.SCP), ("rcp_levels", PolicyType.RCP)):
        raw = o.get(kind)
        if raw is None:
            levels[kind] = None
            continue
        levels[kind] = tuple(tuple(check_policy(d, ptype, f"{kind}[{i}][{j}]") for j, d in enumerate(level))
                             for i, level in enumerate(raw))
    return _with_account(state, evolve(acct, **levels))


@op("CreatePrincipal")
def _create_principal(state: IamState, o: dict[str, Any]) -> IamState:
    """Create a user, group or role; optionally with its inline policies, attached managed policies,
    groups and boundary, checked by the same rules as the dedicated ops (bundles use this form)."""
    kind = o.get("kind")
    if kind not in ("user", "group", "role"):
        raise InvalidInput("kind must be user, group or role", "kind")
    account = check_account(o.get("account"))
    name = check_name(kind, o.get("name"))
    path = check_path(o.get("path"))
    acct = _account(state, account, create=True)
    if name.lower() in acct.table(kind):
        raise AlreadyExists(f"{kind} {name!r} already exists in account {account} (names are case-insensitive)",
                            "name")
    arn = principal_arn(kind, account, path, name)
    prefix = {"user": "AIDA", "group": "AGPA", "role": "AROA"}[kind]
    uid = o.get("unique_id") or stable_id(prefix, arn)
    tags = check_tags(dict(o.get("tags") or {}))
    trust = None
    max_session = limits.DEFAULT_SESSION_SECONDS
    if kind == "role":
        trust = check_policy(o.get("trust_policy"), PolicyType.TRUST, "trust_policy")
        max_session = int(o.get("max_session_duration") or limits.DEFAULT_SESSION_SECONDS)
        if not limits.DEFAULT_SESSION_SECONDS <= max_session <= limits.MAX_SESSION_SECONDS:
            raise InvalidInput(f"max_session_duration must be {limits.DEFAULT_SESSION_SECONDS}-"
                               f"{limits.MAX_SESSION_SECONDS} seconds, got {max_session}", "max_session_duration")
    p = Principal(kind, account, name, path, arn, uid, tags=tags, trust=trust, max_session=max_session)
    for pname, doc in (o.get("inline") or {}).items():
        p = _with_inline(p, pname, doc)
    for parn in o.get("attached") or ():
        p = _with_attached(state, p, parn)
    for g in o.get("groups") or ():
        p = _with_group(state, p, g)
    if o.get("boundary"):
        p = _with_boundary(state, p, o["boundary"])
    return _put_principal(state, p)


# Principal transformers: check one change against the state and return the changed principal.

def _with_inline(p: Principal, pname: Any, document: Any) -> Principal:
    if not isinstance(pname, str) or not INLINE_POLICY_NAME.match(pname):
        raise InvalidInput("policy_name: 1-128 characters, no white space and none of \\ / * ?", "policy_name")
    doc = check_policy(document, PolicyType.IDENTITY, "document", _inline_size_kind(p.kind))
    inline = tuple((n, d) for n, d in p.inline if n != pname) + ((pname, doc),)
    # Inline policies of one principal share one size quota (spec 8).
    total = sum(len(json.dumps(json.loads(d), separators=(",", ":"), ensure_ascii=False)) for _, d in inline)
    cap = limits.SIZE_LIMITS[_inline_size_kind(p.kind)][0]
    if total > cap:
        raise QuotaExceeded(f"inline policies of a {p.kind} total at most {cap} characters without white space; "
                            f"this would make {total}", "document")
    return evolve(p, inline=inline)


def _with_attached(state: IamState, p: Principal, arn: Any) -> Principal:
    pol = state.policies.get(arn) if isinstance(arn, str) else None
    if pol is None:
        raise NotFound(f"policy {arn!r} does not exist", "policy_arn")
    if pol.arn in p.attached:
        return p
    _limit_attached(p)
    return evolve(p, attached=p.attached + (pol.arn,))   # the policy's own string: shared, not copied


def _with_group(state: IamState, user: Principal, group_name: Any) -> Principal:
    if user.kind != "user":
        raise InvalidInput("only users can be members of groups", "group")
    group = _get_principal(state, user.account, "group", str(group_name))
    if group.name in user.groups:
        return user
    if len(user.groups) >= limits.MAX_GROUPS_PER_USER:
        raise QuotaExceeded(f"a user can be in at most {limits.MAX_GROUPS_PER_USER} groups", "group")
    return evolve(user, groups=user.groups + (group.name,))


def _with_boundary(state: IamState, p: Principal, arn: Any) -> Principal:
    if p.kind == "group":
        raise InvalidInput("groups cannot have a permissions boundary; use a user or a role", "principal.kind")
    if arn is not None:
        pol = state.policies.get(arn) if isinstance(arn, str) else None
        if pol is None:
            raise NotFound(f"policy {arn!r} does not exist", "policy_arn")
        arn = pol.arn
    return evolve(p, boundary=arn)


@op("DeletePrincipal")
def _delete_principal(state: IamState, o: dict[str, Any]) -> IamState:
    p = _get_principal(state, o["account"], o["kind"], o["name"])
    if p.inline or p.attached:
        raise Conflict(f"{p.arn} still has policies; delete or detach them first", "name")
    acct = _account(state, p.account)
    table = _own(acct.table(p.kind))
    del table[p.name.lower()]
    changes: dict[str, Any] = {{"user": "users", "group": "groups", "role": "roles"}[p.kind]: table}
    return _with_account(state, evolve(acct, **changes))


@op("CreatePolicy")
def _create_policy(state: IamState, o: dict[str, Any]) -> IamState:
    account = o.get("account")
    if account != "aws":   # AWS managed policies live in the pseudo-account "aws"
        account = check_account(account)
    name = check_name("policy", o.get("name"))
    path = check_path(o.get("path"))
    arn = o.get("arn") or policy_arn(account, path, name)
    size_kind = "aws-managed" if account == "aws" else "managed"
    if arn in state.policies:
        raise AlreadyExists(f"policy {arn} already exists", "name")
    versions = o.get("versions")
    if versions:  # from IAM details: every stored version
        if len(versions) > limits.MAX_POLICY_VERSIONS:
            raise QuotaExceeded(f"a managed policy keeps at most {limits.MAX_POLICY_VERSIONS} versions", "versions")
        vers = tuple((str(v), check_policy(d, PolicyType.IDENTITY, f"versions[{v}]", size_kind))
                     for v, d in versions)
        default = o.get("default_version") or vers[-1][0]
    else:
        vers = (("v1", check_policy(o.get("document"), PolicyType.IDENTITY, "document", size_kind)),)
        default = "v1"
    policies = _own(state.policies)
    policies[arn] = ManagedPolicy(arn, name, path, vers, default, str(o.get("description") or ""))
    return evolve(state if account == "aws" else _ensure_account(state, account), policies=policies)


@op("CreatePolicyVersion")
def _create_policy_version(state: IamState, o: dict[str, Any]) -> IamState:
    arn = o.get("arn", "")
    pol = state.policies.get(arn)
    if pol is None:
        raise NotFound(f"policy {arn!r} does not exist", "arn")
    if len(pol.versions) >= limits.MAX_POLICY_VERSIONS:
        raise QuotaExceeded(f"policy {arn} already has {limits.MAX_POLICY_VERSIONS} versions; delete one first", "arn")
    doc = check_policy(o.get("document"), PolicyType.IDENTITY, "document", "managed")
    nums = [int(v[1:]) for v, _ in pol.versions if v[1:].isdigit()]
    vid = f"v{max(nums, default=0) + 1}"
    new = evolve(pol, versions=pol.versions + ((vid, doc),),
                  default_version=vid if o.get("set_as_default") else pol.default_version)
    policies = _own(state.policies)
    policies[arn] = new
    return evolve(state, policies=policies)


def _attachments(state: IamState, arn: str) -> list[str]:
    found = []
    for acct in state.accounts.values():
        for table in (acct.users, acct.groups, acct.roles):
            for p in table.values():
                if arn in p.attached or p.boundary == arn:
                    found.append(p.arn)
    return found


@op("DeletePolicy")
def _delete_policy(state: IamState, o: dict[str, Any]) -> IamState:
    arn = o.get("arn", "")
    if arn not in state.policies:
        raise NotFound(f"policy {arn!r} does not exist", "arn")
    users = _attachments(state, arn)
    if users:
        raise Conflict(f"policy {arn} is still attached to {len(users)} entities (e.g. {users[0]}); detach it first",
                       "arn")
    policies = _own(state.policies)
    del policies[arn]
    return evolve(state, policies=policies)


@op("PutInlinePolicy")
def _put_inline(state: IamState, o: dict[str, Any]) -> IamState:
    p = _get_principal(state, o["account"], o["kind"], o["name"])
    return _put_principal(state, _with_inline(p, o.get("policy_name"), o.get("document")))


@op("DeleteInlinePolicy")
def _delete_inline(state: IamState, o: dict[str, Any]) -> IamState:
    p = _get_principal(state, o["account"], o["kind"], o["name"])
    pname = o.get("policy_name")
    if not any(n == pname for n, _ in p.inline):
        raise NotFound(f"{p.arn} has no inline policy named {pname!r}", "policy_name")
    return _put_principal(state, evolve(p, inline=tuple((n, d) for n, d in p.inline if n != pname)))


@op("AttachPolicy")
def _attach(state: IamState, o: dict[str, Any]) -> IamState:
    p = _get_principal(state, o["account"], o["kind"], o["name"])
    changed = _with_attached(state, p, o.get("policy_arn", ""))
    return state if changed is p else _put_principal(state, changed)


@op("DetachPolicy")
def _detach(state: IamState, o: dict[str, Any]) -> IamState:
    p = _get_principal(state, o["account"], o["kind"], o["name"])
    arn = o.get("policy_arn", "")
    if arn not in p.attached:
        raise NotFound(f"policy {arn!r} is not attached to {p.arn}", "policy_arn")
    return _put_principal(state, evolve(p, attached=tuple(a for a in p.attached if a != arn)))


@op("AddUserToGroup")
def _add_to_group(state: IamState, o: dict[str, Any]) -> IamState:
    user = _get_principal(state, o["account"], "user", o["user"])
    changed = _with_group(state, user, o["group"])
    return state if changed is user else _put_principal(state, changed)


@op("RemoveUserFromGroup")
def _remove_from_group(state: IamState, o: dict[str, Any]) -> IamState:
    user = _get_principal(state, o["account"], "user", o["user"])
    if o["group"] not in user.groups:
        raise NotFound(f"user {user.name} is not in group {o['group']!r}", "group")
    return _put_principal(state, evolve(user, groups=tuple(g for g in user.groups if g != o["group"])))


@op("SetPermissionsBoundary")
def _set_boundary(state: IamState, o: dict[str, Any]) -> IamState:
    p = _get_principal(state, o["account"], o["kind"], o["name"])
    return _put_principal(state, _with_boundary(state, p, o.get("policy_arn") or None))


@op("TagPrincipal")
def _tag(state: IamState, o: dict[str, Any]) -> IamState:
    p = _get_principal(state, o["account"], o["kind"], o["name"])
    if p.kind == "group":
        raise InvalidInput("groups cannot be tagged in IAM", "principal.kind")
    remove = {k.lower() for k in o.get("remove_keys") or ()}
    new = dict(o.get("tags") or {})
    new_lower = {k.lower() for k in new}
    merged = {k: v for k, v in p.tags if k.lower() not in remove and k.lower() not in new_lower}
    merged.update(new)
    return _put_principal(state, evolve(p, tags=check_tags(merged)))


@op("SetTrustPolicy")
def _set_trust(state: IamState, o: dict[str, Any]) -> IamState:
    p = _get_principal(state, o["account"], "role", o["name"])
    return _put_principal(state, evolve(p, trust=check_policy(o.get("document"), PolicyType.TRUST, "document")))


@op("CreateAccessKey")
def _create_key(state: IamState, o: dict[str, Any]) -> IamState:
    user = _get_principal(state, o["account"], "user", o["user"])
    kid, secret = o.get("id"), o.get("secret")
    if not isinstance(kid, str) or not re.match(r"^[A-Z0-9]{16,128}$", kid):
        raise InvalidInput("access key id must be 16-128 upper-case letters and digits", "access_key_id")
    if not isinstance(secret, str) or len(secret) < 16:
        raise InvalidInput("secret access key must be at least 16 characters", "secret_access_key")
    if kid in state.access_keys:
        raise AlreadyExists(f"access key {kid} already exists", "access_key_id")
    held = state.user_keys.get(user.arn, ())
    if len(held) >= MAX_ACCESS_KEYS_PER_USER:
        raise QuotaExceeded(f"user {user.arn} already has {MAX_ACCESS_KEYS_PER_USER} access keys (the IAM limit); "
                            "delete one first", "user")
    keys = _own(state.access_keys)
    keys[kid] = AccessKey(kid, secret, user.arn)
    by_user = _own(state.user_keys)
    by_user[user.arn] = held + (kid,)
    return evolve(state, access_keys=keys, user_keys=by_user)


@op("DeleteAccessKey")
def _delete_key(state: IamState, o: dict[str, Any]) -> IamState:
    kid = o.get("id", "")
    if kid not in state.access_keys:
        raise NotFound(f"access key {kid!r} does not exist", "access_key_id")
    keys = _own(state.access_keys)
    gone = keys.pop(kid)
    by_user = _own(state.user_keys)
    if gone.principal in by_user:
        by_user[gone.principal] = tuple(k for k in by_user[gone.principal] if k != kid)
    return evolve(state, access_keys=keys, user_keys=by_user)


def resource_arn(partition: str, region: str, account: str, rtype: str, name: str, created_ms: int) -> str:
    return f"arn:{partition}:kinesisvideo:{region}:{account}:{rtype}/{name}/{created_ms}"


_KVS_ARN = re.compile(r"^arn:([a-z\d-]+):kinesisvideo:([a-z0-9-]+):(\d{12}):(stream|channel)/([a-zA-Z0-9_.-]+)/(\d+)$")


@op("RegisterResource")
def _register(state: IamState, o: dict[str, Any]) -> IamState:
    rtype = o.get("type")
    if rtype not in ("stream", "channel"):
        raise InvalidInput(f"type must be stream or channel, got {rtype!r}", "type")
    arn = o.get("arn")
    if not isinstance(arn, str) or len(arn) > 1024:
        raise InvalidInput("arn is required (at most 1,024 characters)", "arn")
    m = _KVS_ARN.match(arn)
    if not m or m.group(4) != rtype:
        raise InvalidInput(f"arn {arn!r} is not a Kinesis Video {rtype} ARN "
                           f"(arn:aws:kinesisvideo:REGION:ACCOUNT:{rtype}/NAME/CREATION-MS)", "arn")
    partition, region, account, _, name, _ = m.groups()
    if not RESOURCE_NAME.match(name):
        raise InvalidInput("name: 1-256 characters of letters, digits and _.-", "name")
    key = (rtype, partition, region, account, name)
    existing = state.resource_names.get(key)
    if arn in state.resources or existing is not None:
        raise AlreadyExists(f"a {rtype} named {name!r} already exists in {region} of account {account}", "name")
    tags = check_tags(dict(o.get("tags") or {}), max_count=MAX_RESOURCE_TAGS)
    policy = o.get("policy")
    if policy is not None:
        policy = check_policy(policy, PolicyType.RESOURCE, "resource_policy")
    resources = _own(state.resources)
    resources[arn] = Resource(arn, rtype, name, partition, region, account, tags, policy)
    names = _own(state.resource_names)
    names[key] = arn
    return evolve(_ensure_account(state, account), resources=resources, resource_names=names)


@op("DeleteResource")
def _delete_resource(state: IamState, o: dict[str, Any]) -> IamState:
    arn = o.get("arn", "")
    res = state.resources.get(arn)
    if res is None:
        raise NotFound(f"resource {arn!r} is not registered", "arn")
    resources = _own(state.resources)
    del resources[arn]
    names = _own(state.resource_names)
    names.pop((res.type, res.partition, res.region, res.account, res.name), None)
    return evolve(state, resources=resources, resource_names=names)


@op("CreateSession")
def _create_session(state: IamState, o: dict[str, Any]) -> IamState:
    s = Session(o["arn"], o["role_arn"], o["role_id"], o["session_name"], float(o["issued"]), float(o["expires"]),
                o.get("policy"), tuple((k, v) for k, v in (o.get("tags") or {}).items()), o.get("access_key_id", ""),
                o.get("source", ""))
    sessions = _own(state.sessions)
    keys = _own(state.access_keys)
    n = len(sessions) + 1
    if n & (n - 1) == 0:
        # Expired sessions and their keys fall away whenever the table reaches a power of two:
        # amortised constant work per session (they are refused on use before that anyway).
        for arn in [a for a, v in sessions.items() if v.expires <= s.issued]:
            gone = sessions.pop(arn)
            keys.pop(gone.access_key, None)
    sessions[s.arn] = s
    if s.access_key:
        keys[s.access_key] = AccessKey(s.access_key, o["secret"], s.arn, o.get("session_token"), s.expires)
    return evolve(state, sessions=sessions, access_keys=keys)
