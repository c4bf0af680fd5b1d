"""Who is asking (requester facts) and the Principal/NotPrincipal element that names them (spec 2.7)."""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from functools import lru_cache
from enum import IntEnum
from typing import Any

from .arn import split_arn


class GrantKind(IntEnum):
    """How a resource-policy principal entry matched the requester (spec 2.7, 3.4); higher is stronger."""

    NONE = 0
    ACCOUNT = 1
    ENTITY = 2
    EXACT = 3       # EXACT and WILDCARD are equally strong
    WILDCARD = 4

    @property
    def label(self) -> str:
        return self.name


ANONYMOUS = "anonymous"
_ACCOUNT_ID = re.compile(r"[0-9]{12}", re.ASCII)   # matched whole: fullmatch, ASCII digits


@dataclass(frozen=True, slots=True)
class Requester:
    """Facts about the authenticated caller, derived from its ARN (and the user/role id)."""

    arn: str                    # as given: user/role-session/federated/root ARN, service name, or "anonymous"
    kind: str                   # user | assumed-role | federated-user | root | service | anonymous | role | unknown
    partition: str = ""
    account: str = ""           # "" for anonymous and services
    name: str = ""              # user name, role name (sessions), federated-user name
    session: str = ""           # session name for assumed-role
    unique_id: str = ""         # AIDA... for users, AROA... (role id) for sessions, from aws:userid
    federated_creator: str = ""  # ARN of the IAM user that created a federated-user session, when known

    @property
    def is_session(self) -> bool:
        return self.kind in ("assumed-role", "federated-user")

    @property
    def account_arn(self) -> str:
        return f"arn:{self.partition or 'aws'}:iam::{self.account}:root"

    @property
    def role_arn_without_path(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/{self.name}"


@lru_cache(maxsize=8192)
def parse_requester(principal: str, userid: str | None = None, federated_creator: str = "") -> Requester:
    """Requester facts from the principal string of a request (immutable, so remembered)."""
    if principal == ANONYMOUS or principal == "":
        return Requester(ANONYMOUS, "anonymous")
    if principal.endswith(".amazonaws.com") and not principal.startswith("arn:"):
        return Requester(principal, "service")
    f = split_arn(principal)
    if f is None:
        return Requester(principal, "unknown")
    _, partition, service, _region, account, res = f
    uid = userid or ""
    if service == "iam":
        if res == "root":
            return Requester(principal, "root", partition, account, unique_id=uid)
        if res.startswith("user/"):
            return Requester(principal, "user", partition, account, res.rsplit("/", 1)[-1], unique_id=uid)
        if res.startswith("role/"):
            return Requester(principal, "role", partition, account, res.rsplit("/", 1)[-1], unique_id=uid)
    elif service == "sts":
        if res.startswith("assumed-role/"):
            bits = res.split("/")
            if len(bits) >= 3:
                role_id = uid.split(":", 1)[0] if uid else ""
                return Requester(principal, "assumed-role", partition, account, bits[1], "/".join(bits[2:]),
                                 unique_id=role_id)
        if res.startswith("federated-user/"):
            return Requester(principal, "federated-user", partition, account, res[len("federated-user/"):],
                             unique_id=uid, federated_creator=federated_creator)
    return Requester(principal, "unknown", partition, account)


# ------------------------------------------------------------------ principal entries


@dataclass(frozen=True, slots=True)
class PrincipalEntry:
    kind: str          # wildcard | account | user | role | session | federated-user | unique-id | service | federated | canonical | invalid
    value: str         # normalised: account id, ARN, id, service name
    partition: str = ""
    account: str = ""
    name: str = ""     # role name for role entries

    def match(self, r: Requester) -> GrantKind:
        k = self.kind
        if k == "wildcard":
            return GrantKind.WILDCARD
        if r.kind == "anonymous":
            return GrantKind.NONE
        if k == "account":
            return GrantKind.ACCOUNT if r.account and r.account == self.value else GrantKind.NONE
        if k == "user":
            if r.kind == "user" and r.arn == self.value:
                return GrantKind.EXACT
            if r.kind == "federated-user" and r.federated_creator == self.value:
                return GrantKind.ENTITY
            return GrantKind.NONE
        if k == "role":
            if (r.kind == "assumed-role" and r.account == self.account and r.partition == self.partition
                    and r.name == self.name):
                return GrantKind.ENTITY
            if r.kind == "role" and r.arn == self.value:
                return GrantKind.EXACT
            return GrantKind.NONE
        if k in ("session", "federated-user"):
            return GrantKind.EXACT if r.arn == self.value else GrantKind.NONE
        if k == "unique-id":
            if not r.unique_id or r.unique_id != self.value:
                return GrantKind.NONE
            return GrantKind.ENTITY if r.kind == "assumed-role" else GrantKind.EXACT
        if k == "service":
            return GrantKind.EXACT if r.kind == "service" and r.arn == self.value else GrantKind.NONE
        if k in ("federated", "canonical"):
            return GrantKind.EXACT if r.arn == self.value else GrantKind.NONE
        return GrantKind.NONE


def _aws_entry(value: str) -> PrincipalEntry:
    if value == "*":
        return PrincipalEntry("wildcard", "*")
    if _ACCOUNT_ID.fullmatch(value):
        return PrincipalEntry("account", value)
    if value.startswith(("AIDA", "AROA")) and ":" not in value:
        return PrincipalEntry("unique-id", value)
    f = split_arn(value)
    if f is None or "*" in value or "?" in value:
        return PrincipalEntry("invalid", value)
    _, partition, service, _region, account, res = f
    if service == "iam":
        if res == "root":
            return PrincipalEntry("account", account, partition, account)
        if res.startswith("user/"):
            return PrincipalEntry("user", value, partition, account, res.rsplit("/", 1)[-1])
        if res.startswith("role/"):
            return PrincipalEntry("role", value, partition, account, res.rsplit("/", 1)[-1])
    if service == "sts":
        if res.startswith("assumed-role/"):
            return PrincipalEntry("session", value, partition, account)
        if res.startswith("federated-user/"):
            return PrincipalEntry("federated-user", value, partition, account)
    return PrincipalEntry("invalid", value)


def compile_principal(element: Any) -> tuple[PrincipalEntry, ...]:
    """Entries of a Principal/NotPrincipal element, leniently: unknown shapes match nobody."""
    if element == "*":
        return (PrincipalEntry("wildcard", "*"),)
    if not isinstance(element, dict):
        return (PrincipalEntry("invalid", reprlib.repr(element)),)   # bounded: element may nest deeply
    out: list[PrincipalEntry] = []
    for key, raw in element.items():
        values = raw if isinstance(raw, list) else [raw]
        for v in values:
            if not isinstance(v, str):
                out.append(PrincipalEntry("invalid", reprlib.repr(v)))
            elif key == "AWS":
                out.append(_aws_entry(v))
            elif key == "Service":
                out.append(PrincipalEntry("service", v))
            elif key == "Federated":
                out.append(PrincipalEntry("federated", v))
            elif key == "CanonicalUser":
                out.append(PrincipalEntry("canonical", v))
            else:
                out.append(PrincipalEntry("invalid", v))
    return tuple(out)


def principal_grant(entries: tuple[PrincipalEntry, ...], r: Requester) -> GrantKind:
    """The strongest way any entry matches the requester."""
    best = GrantKind.NONE
    for e in entries:
        k = e.match(r)
        if k > best:
            best = k
    return best


def not_principal_applies(entries: tuple[PrincipalEntry, ...], r: Requester, *, strict: bool = True) -> bool:
    """Does a NotPrincipal statement apply to the requester (i.e. the requester is not excluded)?

    strict (default, spec 2.7): a session escapes only if its account, its role and the session ARN
    are all listed; a user only if its account and its user ARN are; root if its account is.
    lenient: the requester's exact ARN listed is enough.
    """
    kinds = [e.match(r) for e in entries]
    if any(k == GrantKind.WILDCARD for k in kinds):
        return False
    exact = any(k == GrantKind.EXACT for k in kinds)
    if not strict:
        return not exact
    account = any(k == GrantKind.ACCOUNT for k in kinds)
    entity = any(k == GrantKind.ENTITY for k in kinds)
    if r.kind == "root":
        return not account
    if r.kind == "user":
        return not (account and exact)
    if r.kind == "assumed-role":
        return not (account and entity and exact)
    if r.kind == "federated-user":
        return not (account and exact)
    return not exact
