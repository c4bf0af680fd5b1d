"""The IAM state as immutable records: its identifiers, the checks ops make and the persistent tables ops write.

Every change, whether it comes from a bundle file, the admin API or AssumeRole, is an *op* (ops.py):
a typed change whose record is a plain JSON-able dict. Ops carry every generated value (ids, secrets,
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
from typing import Any, Callable, Iterator, Mapping, MutableMapping, Sequence, TypeVar, cast

import immutables

from ..policy import limits
from ..policy.arn import ACCOUNT, RESOURCE, SERVICE, split_arn
from ..policy.model import PolicyType
from ..policy.validate import ValidatorOptions, validate_document
from .errors import InvalidInput, NotFound, QuotaExceeded, StoreError

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

K = TypeVar("K")
V = TypeVar("V")


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
    users: Mapping[str, Principal] = field(default_factory=immutables.Map)    # keyed by lower-cased name
    groups: Mapping[str, Principal] = field(default_factory=immutables.Map)
    roles: Mapping[str, Principal] = field(default_factory=immutables.Map)
    scp_levels: tuple[tuple[str, ...], ...] | None = None          # policy texts, root level first
    rcp_levels: tuple[tuple[str, ...], ...] | None = None
    org_id: str = ""                                               # o-...: aws:PrincipalOrgID/ResourceOrgID
    org_paths: tuple[str, ...] = ()                                # o-.../r-.../ou-.../: aws:*OrgPaths

    def table(self, kind: str) -> Mapping[str, Principal]:
        if kind == "user":
            return self.users
        if kind == "group":
            return self.groups
        if kind == "role":
            return self.roles
        raise KeyError(kind)


@dataclass(frozen=True, slots=True)
class IamState:
    """The whole IAM state. Every table is a persistent map (see "tables" below), read through Mapping only."""

    accounts: Mapping[str, Account] = field(default_factory=immutables.Map)
    policies: Mapping[str, ManagedPolicy] = field(default_factory=immutables.Map)     # by ARN
    resources: Mapping[str, Resource] = field(default_factory=immutables.Map)         # by ARN
    resource_names: Mapping[tuple[str, str, str, str, str], str] = field(default_factory=immutables.Map)
    access_keys: Mapping[str, AccessKey] = field(default_factory=immutables.Map)
    sessions: Mapping[str, Session] = field(default_factory=immutables.Map)           # by access key id
    session_arns: Mapping[str, tuple[str, ...]] = field(default_factory=immutables.Map)  # session ARN -> key ids
    user_keys: Mapping[str, tuple[str, ...]] = field(default_factory=immutables.Map)  # user unique id -> key ids
    # policy ARN -> {ARN of a principal attaching it or having it as boundary: ATTACHED | BOUNDARY}
    attachments: Mapping[str, Mapping[str, int]] = field(default_factory=immutables.Map)
    # (account, group name) -> {lower-cased name of each user in the group: True}
    members: Mapping[tuple[str, str], Mapping[str, bool]] = field(default_factory=immutables.Map)
    # role unique id -> {access key id of each session of the role: True}
    role_sessions: Mapping[str, Mapping[str, bool]] = field(default_factory=immutables.Map)

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

# ------------------------------------------------------------------ tables

# Tables are persistent maps (immutables.Map, a hash array mapped trie): a new state shares all but the
# few trie nodes one op changes with the state it came from, so one admin write costs in proportion to
# what it changes, not to the size of the state, and the snapshots being served are never modified.
#
# A bulk load (a bundle, the replay of the op log) runs inside `transaction()`: there every table is
# copied into a plain dict at most once and then modified in place, so loading 100,000 users costs
# 100,000 dict inserts. Tables of the state a transaction started from are never modified. A state that
# comes out of a transaction holds dicts (freeze() turns them into maps at once; otherwise the first op
# outside a transaction that edits a table converts that table, once).
_TXN: ContextVar["set[int] | None"] = ContextVar("iam_state_txn", default=None)
EMPTY: Mapping[Any, Any] = immutables.Map()
_MUTATION: type = type(immutables.Map[Any, Any]().mutate())    # immutables.MapMutation is a typing Protocol


@contextmanager
def transaction() -> Iterator[None]:
    """Group several ops; tables created inside it are plain dicts mutated in place."""
    if _TXN.get() is not None:
        yield
        return
    token = _TXN.set(set())
    try:
        yield
    finally:
        _TXN.reset(token)


def edit(table: Mapping[K, V]) -> MutableMapping[K, V]:
    """A writable version of `table`, to be passed to done() once written: inside a transaction, a dict
    the transaction owns (the table itself when the transaction made it, else a copy); outside one, a
    mutation of the persistent map (sharing all it does not change)."""
    owned = _TXN.get()
    if owned is not None:
        if id(table) in owned:
            return table  # type: ignore[return-value]
        copy = dict(table)
        owned.add(id(copy))
        return copy
    base = table if isinstance(table, immutables.Map) else immutables.Map(table)
    return cast("MutableMapping[K, V]", base.mutate())


def done(table: MutableMapping[K, V]) -> Mapping[K, V]:
    """The table written through edit(), as a table a state can hold."""
    if type(table) is _MUTATION:
        return cast("Mapping[K, V]", table.finish())  # type: ignore[attr-defined]
    return table


def freeze(state: IamState) -> IamState:
    """`state` with every table a persistent map (a state built inside a transaction holds dicts):
    one pass over the state after a bulk load, so that every later op costs only what it changes."""
    def frozen(table: Mapping[Any, Any]) -> Mapping[Any, Any]:
        return table if isinstance(table, immutables.Map) else immutables.Map(table)
    accounts = immutables.Map({a: evolve(acct, users=frozen(acct.users), groups=frozen(acct.groups),
                                         roles=frozen(acct.roles)) for a, acct in state.accounts.items()})
    return evolve(state, accounts=accounts, policies=frozen(state.policies), resources=frozen(state.resources),
                  resource_names=frozen(state.resource_names), access_keys=frozen(state.access_keys),
                  sessions=frozen(state.sessions), session_arns=frozen(state.session_arns),
                  user_keys=frozen(state.user_keys),
                  attachments=immutables.Map({arn: frozen(by) for arn, by in state.attachments.items()}),
                  members=immutables.Map({g: frozen(by) for g, by in state.members.items()}),
                  role_sessions=immutables.Map({r: frozen(by) for r, by in state.role_sessions.items()}))


def table_field(kind: str) -> str:
    """The Account field holding principals of `kind`."""
    return _TABLE_FIELDS[kind]


_TABLE_FIELDS = {"user": "users", "group": "groups", "role": "roles"}


def get_account(state: IamState, account: str, create: bool = False) -> Account:
    acct = state.accounts.get(account)
    if acct is None:
        if not create:
            raise NotFound(f"account {account} is not loaded", "account")
        acct = Account(account)
    return acct


def ensure_account(state: IamState, account: str) -> IamState:
    """The state with `account` present (an empty one is added when the account is new)."""
    return state if account in state.accounts else with_account(state, Account(account))


def with_account(state: IamState, acct: Account) -> IamState:
    accounts = edit(state.accounts)
    accounts[acct.id] = acct
    return evolve(state, accounts=done(accounts))


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
            get_principal(state, *self.target)
        except StoreError:
            return False
        return True


def get_principal(state: IamState, account: Any, kind: Any, name: Any, unique_id: Any = None) -> Principal:
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


# Reverse indexes, so that no single op scans a table: kept by put_principal and remove_principal
# (managed policies' attachers, groups' members) and by the session ops (a role's sessions).

def _index_set(index: MutableMapping[Any, Mapping[str, Any]], key: Any, member: str, value: Any) -> None:
    """Set (or with None, remove) `member` in the inner table `key` of a two-level index being edited."""
    inner = edit(index.get(key, EMPTY))
    if value is None:
        inner.pop(member, None)
    else:
        inner[member] = value
    if len(inner):
        index[key] = done(inner)
    else:
        index.pop(key, None)


# The managed policies' index: policy ARN -> {principal ARN: ATTACHED | BOUNDARY}.
ATTACHED = 1
BOUNDARY = 2


def _policy_refs(p: Principal | None) -> dict[str, int]:
    refs: dict[str, int] = {}
    if p is not None:
        for arn in p.attached:
            refs[arn] = ATTACHED
        if p.boundary is not None:
            refs[p.boundary] = refs.get(p.boundary, 0) | BOUNDARY
    return refs


def _reindex(state: IamState, old: Principal | None, new: Principal | None) -> IamState:
    before, after = _policy_refs(old), _policy_refs(new)
    if before == after and (old is None or new is None or old.arn == new.arn):
        return state
    index = edit(state.attachments)
    for arn in before.keys() | after.keys():
        if old is not None:
            _index_set(index, arn, old.arn, None)
        if new is not None and arn in after:
            _index_set(index, arn, new.arn, after[arn])
    return evolve(state, attachments=done(index))


def _remember_groups(state: IamState, old: Principal | None, new: Principal | None) -> IamState:
    """The groups' members index after user `old` became `new` (either None: created, deleted)."""
    before = set(old.groups) if old is not None else set()
    after = set(new.groups) if new is not None else set()
    if before == after:
        return state
    user = (new or old).name.lower()   # type: ignore[union-attr]
    account = (new or old).account     # type: ignore[union-attr]
    index = edit(state.members)
    for g in before - after:
        _index_set(index, (account, g), user, None)
    for g in after - before:
        _index_set(index, (account, g), user, True)
    return evolve(state, members=done(index))


def members_of(state: IamState, account: str, group: str) -> list[Principal]:
    """The users in the group named `group` of `account`."""
    acct = state.accounts.get(account)
    names = state.members.get((account, group), EMPTY)
    return [acct.users[n] for n in names] if acct is not None else []


def sessions_of(state: IamState, role_id: str) -> list[str]:
    """The access key ids of the sessions of the role with unique id `role_id`."""
    return list(state.role_sessions.get(role_id, EMPTY))


def remember_session(state: IamState, role_id: str, kid: str) -> IamState:
    index = edit(state.role_sessions)
    _index_set(index, role_id, kid, True)
    return evolve(state, role_sessions=done(index))


def put_principal(state: IamState, p: Principal) -> IamState:
    """The state with `p` added or replacing the principal of its kind and name (and the index updated)."""
    acct = get_account(state, p.account, create=True)
    field_name = table_field(p.kind)
    table = edit(acct.table(p.kind))
    old = table.get(p.name.lower())
    table[p.name.lower()] = p
    state = with_account(state, evolve(acct, **{field_name: done(table)}))
    if p.kind == "user" and (old is None or old.groups is not p.groups):
        state = _remember_groups(state, old, p)
    if old is not None and old.attached is p.attached and old.boundary == p.boundary:
        return state
    return _reindex(state, old, p)


def remove_principal(state: IamState, p: Principal) -> IamState:
    acct = get_account(state, p.account)
    table = edit(acct.table(p.kind))
    del table[p.name.lower()]
    state = with_account(state, evolve(acct, **{table_field(p.kind): done(table)}))
    if p.kind == "user":
        state = _remember_groups(state, p, None)
    return _reindex(state, p, None)


def attachers(state: IamState, policy: str, how: int = ATTACHED | BOUNDARY) -> list[str]:
    """The ARNs of the principals that attach `policy` (ATTACHED), have it as boundary (BOUNDARY), or either."""
    return [arn for arn, flags in state.attachments.get(policy, EMPTY).items() if flags & how]


def drop_keys(state: IamState, kids: Sequence[str]) -> IamState:
    """The state without these access keys (and the sessions they are the credentials of)."""
    keys = edit(state.access_keys)
    by_user = edit(state.user_keys)
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
    state = evolve(state, access_keys=done(keys), user_keys=done(by_user))
    return drop_sessions(state, session_kids) if session_kids else state


def drop_sessions(state: IamState, kids: Sequence[str]) -> IamState:
    """The state without the sessions whose credentials are these access key ids, nor their keys."""
    if not kids:
        return state
    sessions = edit(state.sessions)
    arns = edit(state.session_arns)
    keys = edit(state.access_keys)
    by_role = edit(state.role_sessions)
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
        _index_set(by_role, s.role_id, kid, None)
    return evolve(state, sessions=done(sessions), session_arns=done(arns), access_keys=done(keys),
                  role_sessions=done(by_role))


def resource_arn(partition: str, region: str, account: str, rtype: str, name: str, created_ms: int) -> str:
    return f"arn:{partition}:kinesisvideo:{region}:{account}:{rtype}/{name}/{created_ms}"


# A Kinesis Video stream or channel ARN: partition, region, account, type, name, creation time (ms).
KVS_ARN = re.compile(r"^arn:([a-z\d-]+):kinesisvideo:([a-z0-9-]+):(\d{12}):(stream|channel)/([a-zA-Z0-9_.-]+)/(\d+)$")
_KVS_ARN = KVS_ARN


def principal_of_arn(state: IamState, kind: str, arn: Any) -> Principal | None:
    """The user or role whose ARN is exactly `arn` (path included), or None. Called per request."""
    f = split_arn(arn) if isinstance(arn, str) else None
    if f is None or f[SERVICE] != "iam" or not f[RESOURCE].startswith(kind + "/"):
        return None
    acct = state.accounts.get(f[ACCOUNT])
    p = acct.table(kind).get(f[RESOURCE].rsplit("/", 1)[-1].lower()) if acct is not None else None
    return p if p is not None and p.arn == arn else None


# ------------------------------------------------------------------ ops (typed in ops.py)

# The op functions, importable from here as before ops.py existed. ops.py imports this module, so it
# hands them over (install_op_functions) instead of this module importing it back; importing
# authz.store imports ops.py.
_OP_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def install_op_functions(**functions: Callable[..., Any]) -> None:
    _OP_FUNCTIONS.update(functions)


def _op_function(name: str) -> Callable[..., Any]:
    fn = _OP_FUNCTIONS.get(name)
    if fn is None:    # pragma: no cover - importing authz.store imports ops.py
        raise RuntimeError(f"state.{name} needs authz.store.ops imported")
    return fn


def apply_op(state: IamState, operation: Any) -> IamState:
    """ops.apply_op."""
    return cast(IamState, _op_function("apply_op")(state, operation))


def op_digest(operation: Any) -> str:
    """ops.op_digest."""
    return cast(str, _op_function("op_digest")(operation))


def op_names() -> tuple[str, ...]:
    """ops.op_names."""
    return cast("tuple[str, ...]", _op_function("op_names")())


def with_generated_values(state: IamState, operation: Any) -> Any:
    """ops.with_generated_values, in the form it is given: an op for an op, its record for a mapping
    (for callers that keep and log records)."""
    out = _op_function("with_generated_values")(state, operation)
    return out if hasattr(operation, "record") else out.record()
