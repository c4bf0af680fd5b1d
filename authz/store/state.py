"""The IAM state as immutable records, and the operations that derive a new state from an old one.

Every change, whether it comes from a bundle file, the admin API or AssumeRole, is an *op*: a
plain JSON-able dict applied by `apply_op`. Ops carry every generated value (ids, secrets,
timestamps), so replaying the persisted op log rebuilds exactly the acknowledged state.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
import string
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..policy import limits
from ..policy.model import PolicyType
from ..policy.validate import ValidatorOptions, validate_document
from .errors import AlreadyExists, Conflict, InvalidInput, NotFound, QuotaExceeded, StoreError

ACCOUNT_ID = re.compile(r"^\d{12}$")
NAME_USER_ROLE = re.compile(r"^[\w+=,.@-]{1,64}$")
NAME_GROUP_POLICY = re.compile(r"^[\w+=,.@-]{1,128}$")
INLINE_POLICY_NAME = re.compile(r"^[^\\/*?\s]{1,128}$")
PATH_RE = re.compile(r"^(/|/[\x21-\x7e]*/)$")
RESOURCE_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,256}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}", re.ASCII)      # STS AssumeRole ExternalId
ORG_ID = re.compile(r"o-[a-z0-9]{10,32}", re.ASCII)
ORG_PATH = re.compile(r"o-[a-z0-9]{10,32}/r-[a-z0-9]{4,32}/(ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}/)*", re.ASCII)
TAG_KEY = re.compile(r"^[\w\s.:/=+\-@]{1,128}$", re.UNICODE)
TAG_VALUE = re.compile(r"^[\w\s.:/=+\-@]{0,256}$", re.UNICODE)
MAX_RESOURCE_TAGS = 50
MAX_ACCESS_KEYS_PER_USER = 2           # IAM's quota
ACCESS_KEY_ID = re.compile(r"[A-Z0-9]{16,128}")
UNIQUE_ID = re.compile(r"[A-Z0-9]{16,128}")
UNIQUE_ID_PREFIX = {"user": "AIDA", "group": "AGPA", "role": "AROA"}
UNIQUE_ID_CHARS = 17                   # after the prefix, as IAM's ids (AIDA + 17 = 21 characters)
KEY_STATUSES = ("Active", "Inactive")  # IAM's access key states


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
    revoked_before: float = -math.inf           # roles: sessions issued before this (unix seconds) are refused


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
    """A credential. The secret stays recoverable because SigV4 verification recomputes the signature
    with it; a session token only ever needs comparing, so only its SHA-256 is kept."""

    id: str
    secret: str
    principal: str                              # user ARN or session ARN
    owner_id: str                               # the user's unique id; for a session key, the role's
    token_sha256: bytes | None = None           # temporary credentials: SHA-256 of the session token
    expires: float | None = None                # unix seconds
    status: str = "Active"                      # Active | Inactive (IAM's UpdateAccessKey)


@dataclass(frozen=True, slots=True)
class Session:
    """One issued set of temporary credentials. Sessions are keyed by their access key: two sessions
    with the same ARN (the same role and session name) are two identities with their own policy,
    tags and times."""

    arn: str                                    # arn:aws:sts::ACCT:assumed-role/ROLE/SESSION
    role_arn: str
    role_id: str                                # the role's unique id when the session was issued
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
    org_id: str = ""                                               # o-...: aws:PrincipalOrgID/ResourceOrgID
    org_paths: tuple[str, ...] = ()                                # o-.../r-.../ou-.../: aws:*OrgPaths

    def table(self, kind: str) -> Mapping[str, Principal]:
        return {"user": self.users, "group": self.groups, "role": self.roles}[kind]


@dataclass(frozen=True, slots=True)
class IamState:
    accounts: Mapping[str, Account] = field(default_factory=dict)
    policies: Mapping[str, ManagedPolicy] = field(default_factory=dict)      # by ARN
    resources: Mapping[str, Resource] = field(default_factory=dict)          # by ARN
    resource_names: Mapping[tuple[str, str, str, str, str], str] = field(default_factory=dict)
    access_keys: Mapping[str, AccessKey] = field(default_factory=dict)
    sessions: Mapping[str, Session] = field(default_factory=dict)             # by access key id
    session_arns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # session ARN -> access key ids
    user_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)    # user unique id -> its key ids

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
    """An IAM-style unique id derived from the entity's ARN, stable across reloads: only for principals
    of a hand-written bundle, which declare none (see holder.SnapshotHolder._replay for how one that disappears and
    comes back is kept from reviving what was bound to it)."""
    digest = base64.b32encode(hashlib.sha256(seed.encode()).digest()).decode()
    return prefix + digest[:UNIQUE_ID_CHARS]


def random_id(kind: str) -> str:
    """A fresh IAM-style unique id (AIDA... for users, AGPA... groups, AROA... roles): what IAM gives a
    principal at creation, so that one re-created under the same name is a different identity."""
    alphabet = string.ascii_uppercase + string.digits
    return UNIQUE_ID_PREFIX[kind] + "".join(secrets.choice(alphabet) for _ in range(UNIQUE_ID_CHARS))


def random_token(alphabet: str, n: int) -> str:
    """`n` characters of `alphabet`, each drawn with `secrets` (access key ids, secrets, session tokens)."""
    return "".join(secrets.choice(alphabet) for _ in range(n))


def token_digest(token: str) -> bytes:
    """What the store keeps of a session token: it only ever needs comparing (SigV4 compares digests)."""
    return hashlib.sha256(token.encode()).digest()


def principal_arn(kind: str, account: str, path: str, name: str, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account}:{kind}{path}{name}"


def policy_arn(account: str, path: str, name: str) -> str:
    return f"arn:aws:iam::{account}:policy{path}{name}"


def account_of_arn(arn: str) -> str:
    f = arn.split(":", 5)
    return f[4] if len(f) == 6 else ""


# ------------------------------------------------------------------ checks


def check_account(account: Any, field_name: str = "account") -> str:
    if not isinstance(account, str) or not ACCOUNT_ID.fullmatch(account):
        raise InvalidInput(f"{field_name} must be a 12-digit AWS account id, got {account!r}", field_name)
    return account


def check_name(kind: str, name: Any, field_name: str = "name") -> str:
    pattern = NAME_USER_ROLE if kind in ("user", "role") else NAME_GROUP_POLICY
    limit = limits.MAX_USER_OR_ROLE_NAME if kind in ("user", "role") else limits.MAX_GROUP_OR_POLICY_NAME
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise InvalidInput(f"{field_name}: a {kind} name is 1-{limit} characters of letters, digits and "
                           f"+=,.@_- ; got {name!r}", field_name)
    return name


def check_path(path: Any, field_name: str = "path") -> str:
    if path in (None, ""):
        return "/"
    if not isinstance(path, str) or len(path) > limits.MAX_PATH_CHARS or not PATH_RE.fullmatch(path):
        raise InvalidInput(f"{field_name}: a path starts and ends with '/' and is at most {limits.MAX_PATH_CHARS} "
                           f"printable ASCII characters; got {path!r}", field_name)
    return path


def check_tags(tags: Mapping[str, str], field_name: str = "tags", max_count: int = limits.MAX_TAGS_PER_PRINCIPAL
               ) -> tuple[tuple[str, str], ...]:
    if len(tags) > max_count:
        raise QuotaExceeded(f"{field_name}: at most {max_count} tags, got {len(tags)}", field_name)
    seen: set[str] = set()
    for k, v in tags.items():
        if not isinstance(k, str) or not TAG_KEY.fullmatch(k):
            raise InvalidInput(f"{field_name}: tag key {k!r} must be 1-{limits.MAX_TAG_KEY_CHARS} characters of "
                               "letters, digits, white space and _.:/=+-@", field_name)
        if not isinstance(v, str) or not TAG_VALUE.fullmatch(v):
            raise InvalidInput(f"{field_name}: value of tag {k!r} must be 0-{limits.MAX_TAG_VALUE_CHARS} characters "
                               "of letters, digits, white space and _.:/=+-@", field_name)
        if k.lower() in seen:
            raise InvalidInput(f"{field_name}: tag keys are case-insensitive; {k!r} appears twice", field_name)
        seen.add(k.lower())
    return tuple(tags.items())


def validated_policy(document: Any, policy_type: PolicyType, field_name: str, size_kind: str | None = None
                     ) -> tuple[str, Any]:
    """Validate a policy document; returns its text and the validator's parse of it. Raises InvalidInput
    naming every problem."""
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
    return document, report.document


def check_policy(document: Any, policy_type: PolicyType, field_name: str, size_kind: str | None = None,
                 name: str = "") -> str:
    """Validate a policy document; returns its text. Raises InvalidInput naming every problem.

    `name` is the name decisions know the document by (the *_policy_name functions below): with a
    compile hook installed (`compiling`), the validator's parse is handed to it, so that the document
    is compiled from that parse now rather than parsed and compiled again by the first decision."""
    text, parsed = validated_policy(document, policy_type, field_name, size_kind)
    hook = _ON_VALID_POLICY.get() if name else None
    if hook is not None:
        hook(name, text, parsed)
    return text


# ------------------------------------------------------------------ compiled policy names

# The name of a compiled policy: what a decision's matched statements report, and with the document
# text the key of the store's compiled policies. Validation (check_policy) and decisions
# (snapshot.py) both name documents through these.

def inline_policy_name(owner_arn: str, policy_name: str) -> str:
    return f"{owner_arn}#{policy_name}"


def trust_policy_name(role_arn: str) -> str:
    return f"{role_arn}#trust"


def resource_policy_name(resource_arn: str) -> str:
    return f"{resource_arn}#resource-policy"


def org_policy_name(account: str, kind: str, level: int, index: int) -> str:
    """kind: scp | rcp; level 0 is the root."""
    return f"{account}#{kind}{level}.{index}"


def session_policy_name(session_arn: str) -> str:
    return f"{session_arn}#session"


# (name, document text, the validator's parse of it) -> None: see check_policy.
PolicyHook = Callable[[str, str, Any], None]
_ON_VALID_POLICY: ContextVar[PolicyHook | None] = ContextVar("on_valid_policy", default=None)


@contextmanager
def compiling(hook: PolicyHook) -> Iterator[None]:
    """Within this block, every named document that validates is handed to `hook` (see check_policy)."""
    token = _ON_VALID_POLICY.set(hook)
    try:
        yield
    finally:
        _ON_VALID_POLICY.reset(token)


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


class PrincipalGone(NotFound):
    """The principal an op is addressed to does not exist, or is another principal now (another unique
    id under the same name). Replaying the op log, an op that fails this way because its principal
    was there before and is gone now is retired for good (SnapshotHolder._replay), so that a principal that
    disappears and comes back never gets it again."""

    def __init__(self, message: str, field: str, target: tuple[Any, str, Any, Any]) -> None:
        super().__init__(message, field)
        self.target = target            # (account, kind, name, unique id or None)

    def existed_in(self, state: IamState) -> bool:
        """Whether `state` has the principal this op was addressed to (with its unique id, when the op names one)."""
        try:
            _get_principal(state, *self.target)
        except StoreError:
            return False
        return True


def _get_principal(state: IamState, account: str, kind: str, name: str, unique_id: Any = None) -> Principal:
    """The principal, which must still be the one with `unique_id` when the op names one."""
    if kind not in ("user", "group", "role"):
        raise InvalidInput(f"principal.kind must be user, group or role; got {kind!r}", "principal.kind")
    acct = state.accounts.get(account) if isinstance(account, str) else None
    p = acct.table(kind).get(name.lower()) if acct is not None and isinstance(name, str) else None
    if p is None or p.name != name:
        raise PrincipalGone(f"{kind} {name!r} does not exist in account {account}", "principal.name",
                            (account, kind, name, unique_id))
    if unique_id and p.unique_id != unique_id:
        raise PrincipalGone(f"{kind} {name!r} of account {account} was deleted and created again (unique id "
                            f"{p.unique_id}, not {unique_id})", "principal.name", (account, kind, name, unique_id))
    return p


def _target(state: IamState, o: Mapping[str, Any], kind: str | None = None, name_field: str = "name",
            id_field: str = "unique_id") -> Principal:
    """The principal an op is addressed to (account, kind, name), checked against the unique id it carries."""
    return _get_principal(state, o.get("account"), kind or o.get("kind"), o.get(name_field),  # type: ignore[arg-type]
                          o.get(id_field))


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
    if o.get("org_id") is not None:       # the organization the account is in (optional)
        org_id, paths = o.get("org_id"), o.get("org_paths") or []
        if not isinstance(org_id, str) or not ORG_ID.fullmatch(org_id):
            raise InvalidInput(f"organization id must look like o-exampleorgid (o- and 10-32 lower-case letters "
                               f"or digits), got {org_id!r}", "organization.id")
        if not isinstance(paths, list) or not all(isinstance(p, str) and ORG_PATH.fullmatch(p)
                                                   and p.startswith(org_id + "/") for p in paths):
            raise InvalidInput(f"organization paths are like {org_id}/r-ab12/ou-ab12-11111111/ (this organization's "
                               f"id, the root, then OUs, each ending in /); got {paths!r}", "organization.paths")
        levels["org_id"], levels["org_paths"] = org_id, tuple(paths)
    for kind, ptype in (("scp_levels", PolicyType.SCP), ("rcp_levels", PolicyType.RCP)):
        raw = o.get(kind)
        if raw is None:
            levels[kind] = None
            continue
        short = kind.split("_")[0]
        levels[kind] = tuple(tuple(check_policy(d, ptype, f"{kind}[{i}][{j}]",
                                                name=org_policy_name(account, short, i, j))
                                   for j, d in enumerate(level)) for i, level in enumerate(raw))
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
    # Admin ops carry the random id the store drew; IAM-details bundles carry AWS's; a hand-written
    # bundle declares none, and an op logged before ids were random has none either.
    uid = o.get("unique_id") or stable_id(UNIQUE_ID_PREFIX[kind], arn)
    if not isinstance(uid, str) or not UNIQUE_ID.fullmatch(uid):
        raise InvalidInput(f"unique_id: 16-128 upper-case letters and digits, got {uid!r}", "unique_id")
    tags = check_tags(dict(o.get("tags") or {}))
    trust = None
    max_session = limits.DEFAULT_SESSION_SECONDS
    if kind == "role":
        trust = check_policy(o.get("trust_policy"), PolicyType.TRUST, "trust_policy", name=trust_policy_name(arn))
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
    if not isinstance(pname, str) or not INLINE_POLICY_NAME.fullmatch(pname):
        raise InvalidInput("policy_name: 1-128 characters, no white space and none of \\ / * ?", "policy_name")
    doc = check_policy(document, PolicyType.IDENTITY, "document", _inline_size_kind(p.kind),
                       name=inline_policy_name(p.arn, pname))
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


def _members(acct: Account, group: Principal) -> list[Principal]:
    return [u for u in acct.users.values() if group.name in u.groups]


@op("DeletePrincipal")
def _delete_principal(state: IamState, o: dict[str, Any]) -> IamState:
    """As IAM's DeleteUser/DeleteGroup/DeleteRole: refused (DeleteConflict) while the principal has
    policies, access keys, group memberships or members. A role's sessions end with it.

    An op logged before these checks carries no unique_id: it was accepted then, so it is replayed as
    the deletion it was, taking the user's keys and the group's memberships with it (a re-created
    principal of the same name must not inherit them)."""
    p = _target(state, o)
    acct = _account(state, p.account)
    legacy = not o.get("unique_id")
    held = state.user_keys.get(p.unique_id, ()) if p.kind == "user" else ()
    members = _members(acct, p) if p.kind == "group" else []
    if p.inline or p.attached:
        raise Conflict(f"{p.arn} still has policies; delete its inline policies and detach its managed policies "
                       "first", "name")
    if not legacy:
        if held:
            raise Conflict(f"{p.arn} still has {len(held)} access key(s); delete them first (DeleteAccessKey)",
                           "name")
        if p.groups:
            raise Conflict(f"{p.arn} is still in group(s) {', '.join(p.groups)}; remove it first "
                           "(RemoveUserFromGroup)", "name")
        if members:
            raise Conflict(f"{p.arn} still has {len(members)} member(s) (e.g. {members[0].name}); remove them "
                           "first (RemoveUserFromGroup)", "name")
    for u in members:   # legacy only: none otherwise
        state = _put_principal(state, evolve(u, groups=tuple(g for g in u.groups if g != p.name)))
        acct = _account(state, p.account)
    table = _own(acct.table(p.kind))
    del table[p.name.lower()]
    changes: dict[str, Any] = {{"user": "users", "group": "groups", "role": "roles"}[p.kind]: table}
    state = _with_account(state, evolve(acct, **changes))
    if held:            # legacy only
        state = _drop_keys(state, held)
    if p.kind == "role":
        state = _drop_sessions(state, [k for k, s in state.sessions.items() if s.role_id == p.unique_id])
    return state


def _drop_keys(state: IamState, kids: Sequence[str]) -> IamState:
    """The state without these access keys (and the sessions they are the credentials of)."""
    keys = _own(state.access_keys)
    by_user = _own(state.user_keys)
    session_kids = []
    for kid in kids:
        gone = keys.pop(kid, None)
        if gone is None:
            continue
        if kid in state.sessions:
            session_kids.append(kid)
        held = by_user.get(gone.owner_id)
        if held is not None and kid in held:
            rest = tuple(k for k in held if k != kid)
            if rest:
                by_user[gone.owner_id] = rest
            else:
                del by_user[gone.owner_id]
    state = evolve(state, access_keys=keys, user_keys=by_user)
    return _drop_sessions(state, session_kids) if session_kids else state


def _drop_sessions(state: IamState, kids: Sequence[str]) -> IamState:
    """The state without the sessions whose credentials are these access key ids, nor their keys."""
    if not kids:
        return state
    sessions = _own(state.sessions)
    arns = _own(state.session_arns)
    keys = _own(state.access_keys)
    for kid in kids:
        s = sessions.pop(kid, None)
        keys.pop(kid, None)
        if s is None:
            continue
        rest = tuple(k for k in arns.get(s.arn, ()) if k != kid)
        if rest:
            arns[s.arn] = rest
        else:
            arns.pop(s.arn, None)
    return evolve(state, sessions=sessions, session_arns=arns, access_keys=keys)


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
        served = str(o.get("default_version") or versions[-1][0])    # the version decisions read
        vers = tuple((str(v), check_policy(d, PolicyType.IDENTITY, f"versions[{v}]", size_kind,
                                           name=arn if str(v) == served else "")) for v, d in versions)
        default = o.get("default_version") or vers[-1][0]
    else:
        vers = (("v1", check_policy(o.get("document"), PolicyType.IDENTITY, "document", size_kind, name=arn)),)
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
    doc = check_policy(o.get("document"), PolicyType.IDENTITY, "document", "managed",
                       name=arn if o.get("set_as_default") else "")
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
    p = _target(state, o)
    return _put_principal(state, _with_inline(p, o.get("policy_name"), o.get("document")))


@op("DeleteInlinePolicy")
def _delete_inline(state: IamState, o: dict[str, Any]) -> IamState:
    p = _target(state, o)
    pname = o.get("policy_name")
    if not any(n == pname for n, _ in p.inline):
        raise NotFound(f"{p.arn} has no inline policy named {pname!r}", "policy_name")
    return _put_principal(state, evolve(p, inline=tuple((n, d) for n, d in p.inline if n != pname)))


@op("AttachPolicy")
def _attach(state: IamState, o: dict[str, Any]) -> IamState:
    p = _target(state, o)
    changed = _with_attached(state, p, o.get("policy_arn", ""))
    return state if changed is p else _put_principal(state, changed)


@op("DetachPolicy")
def _detach(state: IamState, o: dict[str, Any]) -> IamState:
    p = _target(state, o)
    arn = o.get("policy_arn", "")
    if arn not in p.attached:
        raise NotFound(f"policy {arn!r} is not attached to {p.arn}", "policy_arn")
    return _put_principal(state, evolve(p, attached=tuple(a for a in p.attached if a != arn)))


@op("AddUserToGroup")
def _add_to_group(state: IamState, o: dict[str, Any]) -> IamState:
    user = _target(state, o, "user", "user")
    _target(state, o, "group", "group", "group_id")
    changed = _with_group(state, user, o["group"])
    return state if changed is user else _put_principal(state, changed)


@op("RemoveUserFromGroup")
def _remove_from_group(state: IamState, o: dict[str, Any]) -> IamState:
    user = _target(state, o, "user", "user")
    if o["group"] not in user.groups:
        raise NotFound(f"user {user.name} is not in group {o['group']!r}", "group")
    return _put_principal(state, evolve(user, groups=tuple(g for g in user.groups if g != o["group"])))


@op("SetPermissionsBoundary")
def _set_boundary(state: IamState, o: dict[str, Any]) -> IamState:
    p = _target(state, o)
    return _put_principal(state, _with_boundary(state, p, o.get("policy_arn") or None))


@op("TagPrincipal")
def _tag(state: IamState, o: dict[str, Any]) -> IamState:
    p = _target(state, o)
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
    p = _target(state, o, "role")
    trust = check_policy(o.get("document"), PolicyType.TRUST, "document", name=trust_policy_name(p.arn))
    return _put_principal(state, evolve(p, trust=trust))


def _check_status(status: Any) -> str:
    if status not in KEY_STATUSES:
        raise InvalidInput(f"status must be Active or Inactive, got {status!r}", "status")
    return str(status)


@op("CreateAccessKey")
def _create_key(state: IamState, o: dict[str, Any]) -> IamState:
    """A long-term key of a user, bound to the user's unique id (`owner_id`: the id the user had when
    the key was made; absent from ops logged before keys were bound, which bind to the user of now)."""
    user = _target(state, o, "user", "user", "owner_id")
    kid, secret = o.get("id"), o.get("secret")
    if not isinstance(kid, str) or not ACCESS_KEY_ID.fullmatch(kid):
        raise InvalidInput("access key id must be 16-128 upper-case letters and digits", "access_key_id")
    if not isinstance(secret, str) or len(secret) < 16:
        raise InvalidInput("secret access key must be at least 16 characters", "secret_access_key")
    status = _check_status(o.get("status") or "Active")
    if kid in state.access_keys:
        raise AlreadyExists(f"access key {kid} already exists", "access_key_id")
    held = state.user_keys.get(user.unique_id, ())
    if len(held) >= MAX_ACCESS_KEYS_PER_USER:
        raise QuotaExceeded(f"user {user.arn} already has {MAX_ACCESS_KEYS_PER_USER} access keys (the IAM limit); "
                            "delete one first", "user")
    keys = _own(state.access_keys)
    keys[kid] = AccessKey(kid, secret, user.arn, user.unique_id, status=status)
    by_user = _own(state.user_keys)
    by_user[user.unique_id] = held + (kid,)
    return evolve(state, access_keys=keys, user_keys=by_user)


def _user_key(state: IamState, kid: Any) -> AccessKey:
    key = state.access_keys.get(kid) if isinstance(kid, str) else None
    if key is None or kid in state.sessions:   # temporary credentials are not IAM access keys
        raise NotFound(f"access key {kid!r} does not exist", "access_key_id")
    return key


@op("UpdateAccessKey")
def _update_key(state: IamState, o: dict[str, Any]) -> IamState:
    """IAM's UpdateAccessKey: make a user's key Active or Inactive (an inactive key authenticates nothing)."""
    key = _user_key(state, o.get("id"))
    status = _check_status(o.get("status"))
    keys = _own(state.access_keys)
    keys[key.id] = evolve(key, status=status)
    return evolve(state, access_keys=keys)


@op("DeleteAccessKey")
def _delete_key(state: IamState, o: dict[str, Any]) -> IamState:
    return _drop_keys(state, [_user_key(state, o.get("id", "")).id])


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
    m = _KVS_ARN.fullmatch(arn)
    if not m or m.group(4) != rtype:
        raise InvalidInput(f"arn {arn!r} is not a Kinesis Video {rtype} ARN "
                           f"(arn:aws:kinesisvideo:REGION:ACCOUNT:{rtype}/NAME/CREATION-MS)", "arn")
    partition, region, account, _, name, _ = m.groups()
    if not RESOURCE_NAME.fullmatch(name):
        raise InvalidInput("name: 1-256 characters of letters, digits and _.-", "name")
    key = (rtype, partition, region, account, name)
    existing = state.resource_names.get(key)
    if arn in state.resources or existing is not None:
        raise AlreadyExists(f"a {rtype} named {name!r} already exists in {region} of account {account}", "name")
    tags = check_tags(dict(o.get("tags") or {}), max_count=MAX_RESOURCE_TAGS)
    policy = o.get("policy")
    if policy is not None:
        policy = check_policy(policy, PolicyType.RESOURCE, "resource_policy", name=resource_policy_name(arn))
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


def principal_of_arn(state: IamState, kind: str, arn: Any) -> Principal | None:
    """The user or role whose ARN is exactly `arn` (path included), or None."""
    f = arn.split(":", 5) if isinstance(arn, str) else []
    if len(f) != 6 or f[2] != "iam" or not f[5].startswith(kind + "/"):
        return None
    acct = state.accounts.get(f[4])
    p = acct.table(kind).get(f[5].rsplit("/", 1)[-1].lower()) if acct is not None else None
    return p if p is not None and p.arn == arn else None


@op("CreateSession")
def _create_session(state: IamState, o: dict[str, Any]) -> IamState:
    """One AssumeRole grant: a session of the role that has unique id `role_id`, whose credentials are
    the access key `access_key_id`. Ops logged before tokens were hashed carry `session_token` itself."""
    role_arn = o.get("role_arn")
    role = principal_of_arn(state, "role", role_arn)
    if role is None or role.unique_id != o.get("role_id"):
        f = str(role_arn).split(":", 5)
        raise PrincipalGone(f"role {role_arn!r} with unique id {o.get('role_id')!r} no longer exists", "role_arn",
                            (f[4] if len(f) == 6 else "", "role", f[-1].rsplit("/", 1)[-1], o.get("role_id")))
    kid = o.get("access_key_id")
    if not isinstance(kid, str) or not ACCESS_KEY_ID.fullmatch(kid):
        raise InvalidInput("access_key_id: a session needs its access key id (16-128 upper-case letters and "
                           "digits)", "access_key_id")
    if kid in state.access_keys:
        raise AlreadyExists(f"access key {kid} already exists", "access_key_id")
    digest = o.get("session_token_sha256")
    if digest is not None:
        token_sha256 = bytes.fromhex(digest)
    elif isinstance(o.get("session_token"), str):
        token_sha256 = token_digest(o["session_token"])
    else:
        raise InvalidInput("session_token_sha256 is required", "session_token_sha256")
    s = Session(o["arn"], role.arn, role.unique_id, o["session_name"], float(o["issued"]), float(o["expires"]),
                o.get("policy"), tuple((k, v) for k, v in (o.get("tags") or {}).items()), kid, o.get("source", ""))
    n = len(state.sessions) + 1
    if n & (n - 1) == 0:
        # Expired sessions and their keys fall away whenever the table reaches a power of two:
        # amortised constant work per session (they are refused on use before that anyway).
        state = _drop_sessions(state, [k for k, v in state.sessions.items() if v.expires <= s.issued])
    sessions = _own(state.sessions)
    arns = _own(state.session_arns)
    keys = _own(state.access_keys)
    sessions[kid] = s
    arns[s.arn] = tuple(k for k in arns.get(s.arn, ()) if sessions[k].expires > s.issued) + (kid,)
    keys[kid] = AccessKey(kid, o["secret"], s.arn, role.unique_id, token_sha256, s.expires)
    return evolve(state, sessions=sessions, session_arns=arns, access_keys=keys)


@op("RevokeSessions")
def _revoke_sessions(state: IamState, o: dict[str, Any]) -> IamState:
    """IAM's "revoke active sessions" of a role: every session issued before `at` is refused from now on."""
    role = _target(state, o, "role")
    at = o.get("at")
    if not isinstance(at, (int, float)) or isinstance(at, bool) or not math.isfinite(at):
        raise InvalidInput("at: the revocation time (unix seconds) is required", "at")
    return _put_principal(state, evolve(role, revoked_before=max(role.revoked_before, float(at))))


@op("RetireOps")
def _retire_ops(state: IamState, o: dict[str, Any]) -> IamState:
    """A record for SnapshotHolder._replay (the logged ops it names are skipped from then on); changes no state."""
    digests = o.get("digests")
    if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
        raise InvalidInput("digests: a list of op digests is required", "digests")
    return state


def op_digest(o: Mapping[str, Any]) -> str:
    """An op's identity in the log, independent of its position."""
    text = json.dumps(o, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# The principals each op is addressed to: (kind, or None for the op's own `kind`; the op's field
# holding the name; the field that carries the principal's unique id).
_TARGETS: Mapping[str, tuple[tuple[str | None, str, str], ...]] = {
    **{name: ((None, "name", "unique_id"),) for name in (
        "PutInlinePolicy", "DeleteInlinePolicy", "AttachPolicy", "DetachPolicy", "SetPermissionsBoundary",
        "TagPrincipal", "DeletePrincipal")},
    "SetTrustPolicy": (("role", "name", "unique_id"),),
    "RevokeSessions": (("role", "name", "unique_id"),),
    "CreateAccessKey": (("user", "user", "owner_id"),),
    "AddUserToGroup": (("user", "user", "unique_id"), ("group", "group", "group_id")),
    "RemoveUserFromGroup": (("user", "user", "unique_id"),),
}


def with_generated_values(state: IamState, o: Mapping[str, Any]) -> dict[str, Any]:
    """The op as it is logged: with a fresh unique id for a principal it creates, and the unique id of
    every principal it is addressed to, so that replaying it acts on that principal or on nothing."""
    out = dict(o)
    name = out.get("op")
    if name == "CreatePrincipal" and not out.get("unique_id") and out.get("kind") in UNIQUE_ID_PREFIX:
        out["unique_id"] = random_id(out["kind"])
    for kind, name_field, id_field in _TARGETS.get(name, ()) if isinstance(name, str) else ():
        if out.get(id_field):
            continue
        try:
            out[id_field] = _target(state, out, kind, name_field, id_field).unique_id
        except StoreError:
            pass        # the op fails on its own, with its own message
    return out
