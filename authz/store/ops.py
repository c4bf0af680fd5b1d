"""Typed changes to the IAM state: one dataclass per op, its validation and its delta.

An op is built by a caller (admin API, AssumeRole) or read from its record, the JSON-able dict the
op log keeps (`Op.record()` / `parse_op`). Records are those earlier versions logged, key for key, so
that a log written before replays exactly and names the same op digests (RetireOps names ops by
digest). An op's `apply` validates it against a state and returns the new state, all or nothing; its
`touched` names the dependency keys (changes.py) of everything it may change, which decides what
remembered decisions a change drops: a key missing there would let a stale Allow be served.

Fields hold what the caller or the record gave, unchecked: `apply` checks them (a record from an old
log may hold anything), with the messages the admin API returns.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, ClassVar, Mapping, NamedTuple, Sequence, TypeVar

from ..policy import limits
from ..policy.arn import split_arn
from ..policy.model import PolicyType
from .changes import EVERYTHING, NOTHING, Touched, account_dep, key_dep, policy_dep, principal_dep, resource_dep
from .errors import AlreadyExists, Conflict, InvalidInput, NotFound, QuotaExceeded, StoreError
from .state import (ACCESS_KEY_ID, INLINE_POLICY_NAME, KEY_STATUSES, KVS_ARN, MAX_ACCESS_KEYS_PER_USER,
                    MAX_RESOURCE_TAGS, ORG_ID, ORG_PATH, RESOURCE_NAME, UNIQUE_ID, UNIQUE_ID_PREFIX, AccessKey,
                    Account, IamState, ManagedPolicy, Principal, PrincipalGone, Resource, Session, attachers,
                    check_account, check_name, check_path, check_policy, check_tags, compiling, done, drop_keys,
                    drop_sessions, edit, ensure_account, evolve, get_account, get_principal, inline_policy_name,
                    install_op_functions, members_of, org_policy_name, policy_arn, principal_arn, principal_of_arn,
                    put_principal, random_id, remember_session, remove_principal, resource_policy_name, sessions_of,
                    stable_id, token_digest, transaction, trust_policy_name, with_account)

__all__ = ["Op", "OPS", "parse_op", "apply_op", "apply_change", "with_generated_values", "op_digest", "op_names",
           "PrincipalGone", "transaction", "compiling"]

OPS: dict[str, type["Op"]] = {}


class Target(NamedTuple):
    """A principal an op is addressed to, by its fields: see with_generated_values."""

    kind: str | None        # user | group | role; None: the op's own `kind` field
    name_field: str         # the field holding its name
    id_field: str           # the field carrying its unique id


ADDRESSED = Target(None, "name", "unique_id")     # the op's own account, kind and name
O = TypeVar("O", bound="Op")


def _op(cls: type[O]) -> type[O]:
    """Register an op class under its NAME; its record keys are its fields, in declaration order."""
    OPS[cls.NAME] = cls
    cls._FIELDS = tuple(f.name for f in fields(cls) if not f.name.startswith("_"))   # type: ignore[arg-type]
    cls._REQUIRED = frozenset(f.name for f in fields(cls)  # type: ignore[arg-type]
                              if f.default is MISSING and f.default_factory is MISSING)
    return cls


def _plain(value: Any) -> Any:
    """A field's value as a record holds it (JSON's shapes: dicts and lists)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One change. Subclasses are frozen keyword-only dataclasses whose fields are the record's keys."""

    NAME: ClassVar[str]
    _FIELDS: ClassVar[tuple[str, ...]] = ()
    _REQUIRED: ClassVar[frozenset[str]] = frozenset()      # fields without a default
    # Fields a record holds even when None (today's callers log them so); other None fields are left out.
    _KEEP_NONE: ClassVar[frozenset[str]] = frozenset()
    # The principals the op is addressed to (see with_generated_values).
    TARGETS: ClassVar[tuple[Target, ...]] = ()
    # How the record this op was read from differs from that form: fields it held as None that are
    # otherwise left out, and _KEEP_NONE fields it did not hold. So record() gives back a logged record
    # key for key, and op_digest the digest it was logged under. Not part of the op's meaning.
    _nulls: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    _absent: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def from_record(cls: type[O], record: Mapping[str, Any]) -> O:
        """The op a record describes; a missing field is None (apply says what is wrong with it)."""
        kwargs: dict[str, Any] = {}
        nulls = []
        for f in cls._FIELDS:
            if f in record:
                value = kwargs[f] = record[f]
                if value is None and f not in cls._KEEP_NONE:
                    nulls.append(f)
            elif f in cls._REQUIRED:
                kwargs[f] = None
        if nulls:
            kwargs["_nulls"] = frozenset(nulls)
        if cls._KEEP_NONE:
            absent = frozenset(f for f in cls._KEEP_NONE if f not in record)
            if absent:
                kwargs["_absent"] = absent
        return cls(**kwargs)

    def record(self) -> dict[str, Any]:
        """The op as the log keeps it (JSON-able)."""
        out: dict[str, Any] = {"op": self.NAME}
        for f in self._FIELDS:
            value = getattr(self, f)
            if value is None and (f in self._absent if f in self._KEEP_NONE else f not in self._nulls):
                continue
            out[f] = _plain(value)
        return out

    def apply(self, state: IamState) -> IamState:
        """The state after this op; raises a StoreError and changes nothing on failure.

        Every op checks all its input before it writes a table, so a failing op changes nothing even
        inside a transaction (where tables are written in place)."""
        raise NotImplementedError

    def touched(self, before: IamState) -> Touched:
        """The dependency keys of everything this op may change when it applies to `before` (more is
        safe: it only drops remembered decisions; one missing could serve a stale Allow)."""
        raise NotImplementedError


def _str(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _principal_touched(account: Any, kind: Any, name: Any) -> Touched:
    return Touched.of(principal_dep(_str(account), _str(kind), _str(name)))


def _limit_attached(p: Principal, extra: int = 1) -> None:
    cap = {"user": limits.MAX_MANAGED_POLICIES_PER_USER, "group": limits.MAX_MANAGED_POLICIES_PER_GROUP,
           "role": limits.MAX_MANAGED_POLICIES_PER_ROLE}[p.kind]
    if len(p.attached) + extra > cap:
        raise QuotaExceeded(f"a {p.kind} can have at most {cap} managed policies attached; {p.arn} has "
                            f"{len(p.attached)}", "policy_arn")


def _inline_size_kind(kind: str) -> str:
    return {"user": "inline-user", "group": "inline-group", "role": "inline-role"}[kind]


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
    group = get_principal(state, user.account, "group", str(group_name))
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


def _check_status(status: Any) -> str:
    if status not in KEY_STATUSES:
        raise InvalidInput(f"status must be Active or Inactive, got {status!r}", "status")
    return str(status)


def _user_key(state: IamState, kid: Any) -> AccessKey:
    key = state.access_keys.get(kid) if isinstance(kid, str) else None
    if key is None or kid in state.sessions:   # temporary credentials are not IAM access keys
        raise NotFound(f"access key {kid!r} does not exist", "access_key_id")
    return key


def _sweep_due(before: IamState) -> bool:
    """Whether a new session sweeps expired ones (see CreateSession.apply)."""
    n = len(before.sessions) + 1
    return n & (n - 1) == 0




# ------------------------------------------------------------------ accounts


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAccount(Op):
    NAME: ClassVar[str] = "CreateAccount"
    account: str

    def apply(self, state: IamState) -> IamState:
        account = check_account(self.account)
        if account in state.accounts:
            return state
        return with_account(state, Account(account))

    def touched(self, before: IamState) -> Touched:
        return Touched.of(account_dep(self.account))


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class SetOrganizationPolicies(Op):
    """An account's organization (optional) and its SCP and RCP levels, root first (None: none apply)."""

    NAME: ClassVar[str] = "SetOrganizationPolicies"
    account: str
    scp_levels: Sequence[Sequence[Any]] | None = None
    rcp_levels: Sequence[Sequence[Any]] | None = None
    org_id: str | None = None
    org_paths: Sequence[str] | None = None

    def apply(self, state: IamState) -> IamState:
        account = check_account(self.account)
        acct = get_account(state, account, create=True)
        levels: dict[str, Any] = {}
        if self.org_id is not None:       # the organization the account is in (optional)
            org_id, paths = self.org_id, self.org_paths or []
            if not isinstance(org_id, str) or not ORG_ID.fullmatch(org_id):
                raise InvalidInput(f"organization id must look like o-exampleorgid (o- and 10-32 lower-case letters "
                                   f"or digits), got {org_id!r}", "organization.id")
            if not isinstance(paths, list) or not all(isinstance(p, str) and ORG_PATH.fullmatch(p)
                                                       and p.startswith(org_id + "/") for p in paths):
                raise InvalidInput(f"organization paths are like {org_id}/r-ab12/ou-ab12-11111111/ (this "
                                   f"organization's id, the root, then OUs, each ending in /); got {paths!r}",
                                   "organization.paths")
            levels["org_id"], levels["org_paths"] = org_id, tuple(paths)
        for kind, ptype in (("scp_levels", PolicyType.SCP), ("rcp_levels", PolicyType.RCP)):
            raw = getattr(self, kind)
            if raw is None:
                levels[kind] = None
                continue
            short = kind.split("_")[0]
            levels[kind] = tuple(tuple(check_policy(d, ptype, f"{kind}[{i}][{j}]",
                                                    name=org_policy_name(account, short, i, j))
                                       for j, d in enumerate(level)) for i, level in enumerate(raw))
        return with_account(state, evolve(acct, **levels))

    def touched(self, before: IamState) -> Touched:
        return Touched.of(account_dep(self.account))


# ------------------------------------------------------------------ principals


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class CreatePrincipal(Op):
    """Create a user, group or role; optionally with its inline policies, attached managed policies,
    groups and boundary, checked by the same rules as the dedicated ops (bundles use this form).

    `unique_id`: admin ops carry the random id the store drew (with_generated_values); IAM-details
    bundles carry AWS's; a hand-written bundle declares none, and an op logged before ids were random
    has none either (then it is derived from the ARN)."""

    NAME: ClassVar[str] = "CreatePrincipal"
    kind: str
    account: str
    name: str
    path: str | None = None
    trust_policy: Any = None
    max_session_duration: int | None = None
    tags: Mapping[str, str] | None = None
    inline: Mapping[str, Any] | None = None
    attached: Sequence[str] | None = None
    groups: Sequence[str] | None = None
    boundary: str | None = None
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        kind = self.kind
        if kind not in ("user", "group", "role"):
            raise InvalidInput("kind must be user, group or role", "kind")
        account = check_account(self.account)
        name = check_name(kind, self.name)
        path = check_path(self.path)
        acct = get_account(state, account, create=True)
        if name.lower() in acct.table(kind):
            raise AlreadyExists(f"{kind} {name!r} already exists in account {account} (names are case-insensitive)",
                                "name")
        arn = principal_arn(kind, account, path, name)
        uid = self.unique_id or stable_id(UNIQUE_ID_PREFIX[kind], arn)
        if not isinstance(uid, str) or not UNIQUE_ID.fullmatch(uid):
            raise InvalidInput(f"unique_id: 16-128 upper-case letters and digits, got {uid!r}", "unique_id")
        tags = check_tags(dict(self.tags or {}))
        trust = None
        max_session = limits.DEFAULT_SESSION_SECONDS
        if kind == "role":
            trust = check_policy(self.trust_policy, PolicyType.TRUST, "trust_policy", name=trust_policy_name(arn))
            max_session = int(self.max_session_duration or limits.DEFAULT_SESSION_SECONDS)
            if not limits.DEFAULT_SESSION_SECONDS <= max_session <= limits.MAX_SESSION_SECONDS:
                raise InvalidInput(f"max_session_duration must be {limits.DEFAULT_SESSION_SECONDS}-"
                                   f"{limits.MAX_SESSION_SECONDS} seconds, got {max_session}", "max_session_duration")
        p = Principal(kind, account, name, path, arn, uid, tags=tags, trust=trust, max_session=max_session)
        for pname, doc in (self.inline or {}).items():
            p = _with_inline(p, pname, doc)
        for parn in self.attached or ():
            p = _with_attached(state, p, parn)
        for g in self.groups or ():
            p = _with_group(state, p, g)
        if self.boundary:
            p = _with_boundary(state, p, self.boundary)
        return put_principal(state, p)

    def touched(self, before: IamState) -> Touched:
        # The account's own facts change only when this creates it (as RegisterResource): every decision in an
        # existing account that could read the new principal reads its p: key.
        created = self.account not in before.accounts
        return _principal_touched(self.account, self.kind, self.name) | Touched.of(
            (account_dep(self.account),) if created else ())


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class DeletePrincipal(Op):
    """As IAM's DeleteUser/DeleteGroup/DeleteRole: refused (DeleteConflict) while the principal has
    policies, access keys, group memberships or members. A role's sessions end with it.

    An op logged before these checks carries no unique_id: it was accepted then, so it is replayed as
    the deletion it was, taking the user's keys and the group's memberships with it (a re-created
    principal of the same name must not inherit them)."""

    NAME: ClassVar[str] = "DeletePrincipal"
    TARGETS: ClassVar[tuple[Target, ...]] = (ADDRESSED,)
    account: str
    kind: str
    name: str
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        p = get_principal(state, self.account, self.kind, self.name, self.unique_id)
        legacy = not self.unique_id
        held = state.user_keys.get(p.unique_id, ()) if p.kind == "user" else ()
        members = sorted(members_of(state, p.account, p.name), key=lambda u: u.name) if p.kind == "group" else []
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
            state = put_principal(state, evolve(u, groups=tuple(g for g in u.groups if g != p.name)))
        state = remove_principal(state, p)
        if held:            # legacy only
            state = drop_keys(state, held)
        if p.kind == "role":
            state = drop_sessions(state, sessions_of(state, p.unique_id))
        return state

    def touched(self, before: IamState) -> Touched:
        out = _principal_touched(self.account, self.kind, self.name)
        p = get_principal(before, self.account, self.kind, self.name, self.unique_id)
        if p.kind == "user":
            out |= Touched.of(key_dep(k) for k in before.user_keys.get(p.unique_id, ()))
        elif p.kind == "group" and not self.unique_id:
            out |= Touched.of(principal_dep(p.account, "user", u.name) for u in members_of(before, p.account, p.name))
        elif p.kind == "role":
            out |= Touched.of(key_dep(k) for k in sessions_of(before, p.unique_id))
        return out


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class PutInlinePolicy(Op):
    NAME: ClassVar[str] = "PutInlinePolicy"
    TARGETS: ClassVar[tuple[Target, ...]] = (ADDRESSED,)
    account: str
    kind: str
    name: str
    policy_name: str
    document: Any
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        p = get_principal(state, self.account, self.kind, self.name, self.unique_id)
        return put_principal(state, _with_inline(p, self.policy_name, self.document))

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, self.kind, self.name)


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteInlinePolicy(Op):
    NAME: ClassVar[str] = "DeleteInlinePolicy"
    TARGETS: ClassVar[tuple[Target, ...]] = (ADDRESSED,)
    account: str
    kind: str
    name: str
    policy_name: str
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        p = get_principal(state, self.account, self.kind, self.name, self.unique_id)
        pname = self.policy_name
        if not any(n == pname for n, _ in p.inline):
            raise NotFound(f"{p.arn} has no inline policy named {pname!r}", "policy_name")
        return put_principal(state, evolve(p, inline=tuple((n, d) for n, d in p.inline if n != pname)))

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, self.kind, self.name)


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class AttachPolicy(Op):
    NAME: ClassVar[str] = "AttachPolicy"
    TARGETS: ClassVar[tuple[Target, ...]] = (ADDRESSED,)
    account: str
    kind: str
    name: str
    policy_arn: str
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        p = get_principal(state, self.account, self.kind, self.name, self.unique_id)
        changed = _with_attached(state, p, self.policy_arn or "")
        return state if changed is p else put_principal(state, changed)

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, self.kind, self.name)


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class DetachPolicy(Op):
    NAME: ClassVar[str] = "DetachPolicy"
    TARGETS: ClassVar[tuple[Target, ...]] = (ADDRESSED,)
    account: str
    kind: str
    name: str
    policy_arn: str
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        p = get_principal(state, self.account, self.kind, self.name, self.unique_id)
        arn = self.policy_arn or ""
        if arn not in p.attached:
            raise NotFound(f"policy {arn!r} is not attached to {p.arn}", "policy_arn")
        return put_principal(state, evolve(p, attached=tuple(a for a in p.attached if a != arn)))

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, self.kind, self.name)


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class SetPermissionsBoundary(Op):
    """A user's or role's permissions boundary: a managed policy ARN, or None to remove it."""

    NAME: ClassVar[str] = "SetPermissionsBoundary"
    TARGETS: ClassVar[tuple[Target, ...]] = (ADDRESSED,)
    _KEEP_NONE: ClassVar[frozenset[str]] = frozenset({"policy_arn"})
    account: str
    kind: str
    name: str
    policy_arn: str | None = None
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        p = get_principal(state, self.account, self.kind, self.name, self.unique_id)
        return put_principal(state, _with_boundary(state, p, self.policy_arn or None))

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, self.kind, self.name)


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class TagPrincipal(Op):
    """Add or replace `tags` and remove the tags keyed `remove_keys` (keys compare case-insensitively)."""

    NAME: ClassVar[str] = "TagPrincipal"
    TARGETS: ClassVar[tuple[Target, ...]] = (ADDRESSED,)
    account: str
    kind: str
    name: str
    tags: Mapping[str, str] | None = None
    remove_keys: Sequence[str] | None = None
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        p = get_principal(state, self.account, self.kind, self.name, self.unique_id)
        if p.kind == "group":
            raise InvalidInput("groups cannot be tagged in IAM", "principal.kind")
        remove = {k.lower() for k in self.remove_keys or ()}
        new = dict(self.tags or {})
        new_lower = {k.lower() for k in new}
        merged = {k: v for k, v in p.tags if k.lower() not in remove and k.lower() not in new_lower}
        merged.update(new)
        return put_principal(state, evolve(p, tags=check_tags(merged)))

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, self.kind, self.name)


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class SetTrustPolicy(Op):
    NAME: ClassVar[str] = "SetTrustPolicy"
    TARGETS: ClassVar[tuple[Target, ...]] = (Target("role", "name", "unique_id"),)
    account: str
    name: str
    document: Any
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        p = get_principal(state, self.account, "role", self.name, self.unique_id)
        trust = check_policy(self.document, PolicyType.TRUST, "document", name=trust_policy_name(p.arn))
        return put_principal(state, evolve(p, trust=trust))

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, "role", self.name)


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class AddUserToGroup(Op):
    NAME: ClassVar[str] = "AddUserToGroup"
    TARGETS: ClassVar[tuple[Target, ...]] = (Target("user", "user", "unique_id"), Target("group", "group", "group_id"))
    account: str
    user: str
    group: str
    unique_id: str | None = None
    group_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        user = get_principal(state, self.account, "user", self.user, self.unique_id)
        get_principal(state, self.account, "group", self.group, self.group_id)
        changed = _with_group(state, user, self.group)
        return state if changed is user else put_principal(state, changed)

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, "user", self.user)


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveUserFromGroup(Op):
    NAME: ClassVar[str] = "RemoveUserFromGroup"
    TARGETS: ClassVar[tuple[Target, ...]] = (Target("user", "user", "unique_id"),)
    account: str
    user: str
    group: str
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        user = get_principal(state, self.account, "user", self.user, self.unique_id)
        if self.group not in user.groups:
            raise NotFound(f"user {user.name} is not in group {self.group!r}", "group")
        return put_principal(state, evolve(user, groups=tuple(g for g in user.groups if g != self.group)))

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, "user", self.user)


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeSessions(Op):
    """IAM's "revoke active sessions" of a role: every session issued before `at` is refused from now on."""

    NAME: ClassVar[str] = "RevokeSessions"
    TARGETS: ClassVar[tuple[Target, ...]] = (Target("role", "name", "unique_id"),)
    account: str
    name: str
    at: float
    unique_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        role = get_principal(state, self.account, "role", self.name, self.unique_id)
        at = self.at
        if not isinstance(at, (int, float)) or isinstance(at, bool) or not math.isfinite(at):
            raise InvalidInput("at: the revocation time (unix seconds) is required", "at")
        return put_principal(state, evolve(role, revoked_before=max(role.revoked_before, float(at))))

    def touched(self, before: IamState) -> Touched:
        return _principal_touched(self.account, "role", self.name)


# ------------------------------------------------------------------ managed policies


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class CreatePolicy(Op):
    """A customer managed policy (`document`), or any managed policy with its stored versions as an
    IAM-details bundle gives them (`arn`, `versions`, `default_version`; account "aws" for AWS's)."""

    NAME: ClassVar[str] = "CreatePolicy"
    account: str
    name: str
    path: str | None = None
    arn: str | None = None
    document: Any = None
    versions: Sequence[Sequence[Any]] | None = None
    default_version: str | None = None
    description: str | None = None

    def _arn(self, account: str, path: str, name: str) -> str:
        return self.arn or policy_arn(account, path, name)

    def apply(self, state: IamState) -> IamState:
        account = self.account
        if account != "aws":   # AWS managed policies live in the pseudo-account "aws"
            account = check_account(account)
        name = check_name("policy", self.name)
        path = check_path(self.path)
        arn = self._arn(account, path, name)
        size_kind = "aws-managed" if account == "aws" else "managed"
        if arn in state.policies:
            raise AlreadyExists(f"policy {arn} already exists", "name")
        versions = self.versions
        if versions:  # from IAM details: every stored version
            if len(versions) > limits.MAX_POLICY_VERSIONS:
                raise QuotaExceeded(f"a managed policy keeps at most {limits.MAX_POLICY_VERSIONS} versions",
                                    "versions")
            served = str(self.default_version or versions[-1][0])    # the version decisions read
            vers = tuple((str(v), check_policy(d, PolicyType.IDENTITY, f"versions[{v}]", size_kind,
                                               name=arn if str(v) == served else "")) for v, d in versions)
            default = self.default_version or vers[-1][0]
        else:
            vers = (("v1", check_policy(self.document, PolicyType.IDENTITY, "document", size_kind, name=arn)),)
            default = "v1"
        policies = edit(state.policies)
        policies[arn] = ManagedPolicy(arn, name, path, vers, default, str(self.description or ""))
        return evolve(state if account == "aws" else ensure_account(state, account), policies=done(policies))

    def touched(self, before: IamState) -> Touched:
        arn = self._arn(_str(self.account), check_path(self.path), _str(self.name))
        created = self.account != "aws" and self.account not in before.accounts
        return Touched.of(policy_dep(arn), (account_dep(self.account),) if created else ())


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class CreatePolicyVersion(Op):
    NAME: ClassVar[str] = "CreatePolicyVersion"
    arn: str
    document: Any
    set_as_default: bool | None = None

    def apply(self, state: IamState) -> IamState:
        arn = self.arn or ""
        pol = state.policies.get(arn)
        if pol is None:
            raise NotFound(f"policy {arn!r} does not exist", "arn")
        if len(pol.versions) >= limits.MAX_POLICY_VERSIONS:
            raise QuotaExceeded(f"policy {arn} already has {limits.MAX_POLICY_VERSIONS} versions; delete one first",
                                "arn")
        doc = check_policy(self.document, PolicyType.IDENTITY, "document", "managed",
                           name=arn if self.set_as_default else "")
        nums = [int(v[1:]) for v, _ in pol.versions if v[1:].isdigit()]
        vid = f"v{max(nums, default=0) + 1}"
        new = evolve(pol, versions=pol.versions + ((vid, doc),),
                     default_version=vid if self.set_as_default else pol.default_version)
        policies = edit(state.policies)
        policies[arn] = new
        return evolve(state, policies=done(policies))

    def touched(self, before: IamState) -> Touched:
        return Touched.of(policy_dep(self.arn))


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class DeletePolicy(Op):
    NAME: ClassVar[str] = "DeletePolicy"
    arn: str

    def apply(self, state: IamState) -> IamState:
        arn = self.arn or ""
        if arn not in state.policies:
            raise NotFound(f"policy {arn!r} does not exist", "arn")
        users = attachers(state, arn)
        if users:
            raise Conflict(f"policy {arn} is still attached to {len(users)} entities (e.g. {min(users)}); detach it "
                           "first", "arn")
        policies = edit(state.policies)
        del policies[arn]
        return evolve(state, policies=done(policies))

    def touched(self, before: IamState) -> Touched:
        return Touched.of(policy_dep(self.arn))


# ------------------------------------------------------------------ access keys


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAccessKey(Op):
    """A long-term key of a user, bound to the user's unique id (`owner_id`: the id the user had when
    the key was made; absent from ops logged before keys were bound, which bind to the user of now)."""

    NAME: ClassVar[str] = "CreateAccessKey"
    TARGETS: ClassVar[tuple[Target, ...]] = (Target("user", "user", "owner_id"),)
    account: str
    user: str
    id: str
    secret: str
    status: str | None = None
    owner_id: str | None = None

    def apply(self, state: IamState) -> IamState:
        user = get_principal(state, self.account, "user", self.user, self.owner_id)
        kid, secret = self.id, self.secret
        if not isinstance(kid, str) or not ACCESS_KEY_ID.fullmatch(kid):
            raise InvalidInput("access key id must be 16-128 upper-case letters and digits", "access_key_id")
        if not isinstance(secret, str) or len(secret) < 16:
            raise InvalidInput("secret access key must be at least 16 characters", "secret_access_key")
        status = _check_status(self.status or "Active")
        if kid in state.access_keys:
            raise AlreadyExists(f"access key {kid} already exists", "access_key_id")
        held = state.user_keys.get(user.unique_id, ())
        if len(held) >= MAX_ACCESS_KEYS_PER_USER:
            raise QuotaExceeded(f"user {user.arn} already has {MAX_ACCESS_KEYS_PER_USER} access keys (the IAM "
                                "limit); delete one first", "user")
        keys = edit(state.access_keys)
        keys[kid] = AccessKey(kid, secret, user.arn, user.unique_id, status=status)
        by_user = edit(state.user_keys)
        by_user[user.unique_id] = held + (kid,)
        return evolve(state, access_keys=done(keys), user_keys=done(by_user))

    def touched(self, before: IamState) -> Touched:
        # Only the key: a user's decisions do not read its keys (a request made with one is resolved
        # through the key, whose dependency is key_dep), so creating one leaves them cached.
        return Touched.of(key_dep(self.id))


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateAccessKey(Op):
    """IAM's UpdateAccessKey: make a user's key Active or Inactive (an inactive key authenticates nothing)."""

    NAME: ClassVar[str] = "UpdateAccessKey"
    id: str
    status: str

    def apply(self, state: IamState) -> IamState:
        key = _user_key(state, self.id)
        status = _check_status(self.status)
        keys = edit(state.access_keys)
        keys[key.id] = evolve(key, status=status)
        return evolve(state, access_keys=done(keys))

    def touched(self, before: IamState) -> Touched:
        return Touched.of(key_dep(self.id))


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAccessKey(Op):
    NAME: ClassVar[str] = "DeleteAccessKey"
    id: str

    def apply(self, state: IamState) -> IamState:
        return drop_keys(state, [_user_key(state, self.id or "").id])

    def touched(self, before: IamState) -> Touched:
        return Touched.of(key_dep(self.id))


# ------------------------------------------------------------------ resources


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterResource(Op):
    """A Kinesis Video stream or channel, by its ARN, with its tags and emulated resource policy."""

    NAME: ClassVar[str] = "RegisterResource"
    _KEEP_NONE: ClassVar[frozenset[str]] = frozenset({"policy"})
    type: str
    arn: str
    tags: Mapping[str, str] | None = None
    policy: Any = None

    def apply(self, state: IamState) -> IamState:
        rtype = self.type
        if rtype not in ("stream", "channel"):
            raise InvalidInput(f"type must be stream or channel, got {rtype!r}", "type")
        arn = self.arn
        if not isinstance(arn, str) or len(arn) > 1024:
            raise InvalidInput("arn is required (at most 1,024 characters)", "arn")
        m = KVS_ARN.fullmatch(arn)
        if not m or m.group(4) != rtype:
            raise InvalidInput(f"arn {arn!r} is not a Kinesis Video {rtype} ARN "
                               f"(arn:aws:kinesisvideo:REGION:ACCOUNT:{rtype}/NAME/CREATION-MS)", "arn")
        partition, region, account, _, name, _ = m.groups()
        if not RESOURCE_NAME.fullmatch(name):
            raise InvalidInput("name: 1-256 characters of letters, digits and _.-", "name")
        key = (rtype, partition, region, account, name)
        if arn in state.resources or state.resource_names.get(key) is not None:
            raise AlreadyExists(f"a {rtype} named {name!r} already exists in {region} of account {account}", "name")
        tags = check_tags(dict(self.tags or {}), max_count=MAX_RESOURCE_TAGS)
        policy = self.policy
        if policy is not None:
            policy = check_policy(policy, PolicyType.RESOURCE, "resource_policy", name=resource_policy_name(arn))
        resources = edit(state.resources)
        resources[arn] = Resource(arn, rtype, name, partition, region, account, tags, policy)
        names = edit(state.resource_names)
        names[key] = arn
        return evolve(ensure_account(state, account), resources=done(resources), resource_names=done(names))

    def touched(self, before: IamState) -> Touched:
        fields_ = split_arn(self.arn) or ["", "", "", "", "", ""]
        created = fields_[4] not in before.accounts
        return Touched.of(resource_dep(self.arn), (account_dep(fields_[4]),) if created else ())


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteResource(Op):
    NAME: ClassVar[str] = "DeleteResource"
    arn: str

    def apply(self, state: IamState) -> IamState:
        arn = self.arn or ""
        res = state.resources.get(arn)
        if res is None:
            raise NotFound(f"resource {arn!r} is not registered", "arn")
        resources = edit(state.resources)
        del resources[arn]
        names = edit(state.resource_names)
        names.pop((res.type, res.partition, res.region, res.account, res.name), None)
        return evolve(state, resources=done(resources), resource_names=done(names))

    def touched(self, before: IamState) -> Touched:
        return Touched.of(resource_dep(self.arn))


# ------------------------------------------------------------------ sessions


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class CreateSession(Op):
    """One AssumeRole grant: a session of the role that has unique id `role_id`, whose credentials are
    the access key `access_key_id`. Ops logged before tokens were hashed carry `session_token` itself
    instead of `session_token_sha256` (hex)."""

    NAME: ClassVar[str] = "CreateSession"
    _KEEP_NONE: ClassVar[frozenset[str]] = frozenset({"policy"})
    arn: str
    role_arn: str
    role_id: str
    session_name: str
    issued: float
    expires: float
    policy: str | None = None
    tags: Mapping[str, str] | None = None
    access_key_id: str
    secret: str
    session_token_sha256: str | None = None
    session_token: str | None = None
    source: str | None = None

    def apply(self, state: IamState) -> IamState:
        role_arn = self.role_arn
        role = principal_of_arn(state, "role", role_arn)
        if role is None or role.unique_id != self.role_id:
            f = split_arn(str(role_arn)) or ["", "", "", "", "", str(role_arn)]
            raise PrincipalGone(f"role {role_arn!r} with unique id {self.role_id!r} no longer exists", "role_arn",
                                (f[4], "role", f[5].rsplit("/", 1)[-1], self.role_id))
        kid = self.access_key_id
        if not isinstance(kid, str) or not ACCESS_KEY_ID.fullmatch(kid):
            raise InvalidInput("access_key_id: a session needs its access key id (16-128 upper-case letters and "
                               "digits)", "access_key_id")
        if kid in state.access_keys:
            raise AlreadyExists(f"access key {kid} already exists", "access_key_id")
        if self.session_token_sha256 is not None:
            token_sha256 = bytes.fromhex(self.session_token_sha256)
        elif isinstance(self.session_token, str):
            token_sha256 = token_digest(self.session_token)
        else:
            raise InvalidInput("session_token_sha256 is required", "session_token_sha256")
        s = Session(self.arn, role.arn, role.unique_id, self.session_name, float(self.issued), float(self.expires),
                    self.policy, tuple((k, v) for k, v in (self.tags or {}).items()), kid, self.source or "")
        if _sweep_due(state):
            # Expired sessions and their keys fall away whenever the table reaches a power of two:
            # amortised constant work per session (they are refused on use before that anyway).
            state = drop_sessions(state, [k for k, v in state.sessions.items() if v.expires <= s.issued])
        sessions = edit(state.sessions)
        arns = edit(state.session_arns)
        keys = edit(state.access_keys)
        sessions[kid] = s
        arns[s.arn] = tuple(k for k in arns.get(s.arn, ()) if sessions[k].expires > s.issued) + (kid,)
        keys[kid] = AccessKey(kid, self.secret, s.arn, role.unique_id, token_sha256, s.expires)
        state = evolve(state, sessions=done(sessions), session_arns=done(arns), access_keys=done(keys))
        return remember_session(state, role.unique_id, kid)

    def touched(self, before: IamState) -> Touched:
        """Its key, the keys listed under its ARN (expired ones leave that list) and, when it sweeps,
        every expired session's key."""
        swept: list[str] = []
        if _sweep_due(before):
            issued = float(self.issued)
            swept = [k for k, v in before.sessions.items() if v.expires <= issued]
        return Touched.of(key_dep(self.access_key_id), (key_dep(k) for k in before.session_arns.get(self.arn, ())),
                          (key_dep(k) for k in swept))


# ------------------------------------------------------------------ the log itself


@_op
@dataclass(frozen=True, slots=True, kw_only=True)
class RetireOps(Op):
    """A record for the op log's replay (the logged ops it names by digest are skipped from then on);
    changes no state."""

    NAME: ClassVar[str] = "RetireOps"
    digests: Sequence[str]

    def apply(self, state: IamState) -> IamState:
        digests = self.digests
        if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            raise InvalidInput("digests: a list of op digests is required", "digests")
        return state

    def touched(self, before: IamState) -> Touched:
        return NOTHING


# ------------------------------------------------------------------ module functions


def parse_op(record: Mapping[str, Any]) -> Op:
    """The op a record describes (from the log, a bundle or a caller's mapping)."""
    name = record.get("op")
    cls = OPS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise InvalidInput(f"unknown operation {name!r}", "op")
    return cls.from_record(record)


def _as_op(operation: Op | Mapping[str, Any]) -> Op:
    return operation if isinstance(operation, Op) else parse_op(operation)


def apply_op(state: IamState, operation: Op | Mapping[str, Any]) -> IamState:
    """The state after one op (or its record); raises a StoreError and leaves `state` untouched on failure."""
    return _as_op(operation).apply(state)


def apply_change(state: IamState, operation: Op | Mapping[str, Any]) -> tuple[IamState, Touched]:
    """The state after one op and what the op touched in `state` (see Op.touched)."""
    o = _as_op(operation)
    try:
        # Before applying: inside a transaction the op writes tables of `state` in place.
        touched = o.touched(state)
    except Exception:   # an op that does not apply (apply raises its own error below): fail closed anyway
        touched = EVERYTHING
    return o.apply(state), touched


def op_names() -> tuple[str, ...]:
    return tuple(sorted(OPS))


def op_digest(operation: Op | Mapping[str, Any]) -> str:
    """An op's identity in the log, independent of its position: of its record."""
    record = operation.record() if isinstance(operation, Op) else operation
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def with_generated_values(state: IamState, operation: Op | Mapping[str, Any]) -> Op:
    """The op as it is logged: with a fresh unique id for a principal it creates, and the unique id of
    every principal it is addressed to, so that replaying it acts on that principal or on nothing."""
    o = _as_op(operation)
    changes: dict[str, Any] = {}
    if isinstance(o, CreatePrincipal) and not o.unique_id and o.kind in UNIQUE_ID_PREFIX:
        changes["unique_id"] = random_id(o.kind)
    for t in o.TARGETS:
        if getattr(o, t.id_field):
            continue
        try:
            changes[t.id_field] = get_principal(state, getattr(o, "account"), t.kind or getattr(o, "kind"),
                                                getattr(o, t.name_field)).unique_id
        except StoreError:
            pass        # the op fails on its own, with its own message
    return replace(o, **changes) if changes else o  # type: ignore[type-var]


install_op_functions(apply_op=apply_op, op_digest=op_digest, op_names=op_names,
                     with_generated_values=with_generated_values)
