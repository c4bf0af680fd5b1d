"""STS: AssumeRole (trust and identity decided, session credentials issued and logged) and revoking sessions."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Mapping

from ..policy import limits
from ..policy.model import PolicyType
from ..policy.principals import parse_requester
from .decisions import Decisions
from .errors import InvalidInput, PermissionDenied
from .holder import CompileHook, SnapshotHolder
from .ops import CreateSession, Op, RevokeSessions
from .state import (EXTERNAL_ID, SESSION_NAME, check_tags, principal_of_arn, random_token, session_policy_name,
                    token_digest, validated_policy)


@dataclass(frozen=True)
class SessionGrant:
    assumed_role_arn: str
    assumed_role_id: str
    expiration: float
    access_key_id: str
    secret_access_key: str
    session_token: str


def assume_role_context(context: Mapping[str, Any], session_name: str, tags: Mapping[str, str],
                        external_id: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """The context of an AssumeRole decision, as (the caller's keys, the keys derived from the request).

    The caller's keys lose aws:RequestTag/* and aws:TagKeys (authorize drops the store's derived keys,
    sts:* among them, in any letter case); every key AWS derives from the AssumeRole request is set
    from the request itself. sts:SourceIdentity and sts:TransitiveTagKeys are not supported and so
    are absent, as AWS leaves them when a request has none."""
    caller = {k: v for k, v in context.items()
              if not (k.lower().startswith("aws:requesttag/") or k.lower() == "aws:tagkeys")}
    derived: dict[str, Any] = {"sts:RoleSessionName": session_name}
    if external_id:
        derived["sts:ExternalId"] = external_id
    if tags:
        derived.update({f"aws:RequestTag/{k}": v for k, v in tags.items()})
        derived["aws:TagKeys"] = list(tags)
    return caller, derived


class Sts:
    """AssumeRole and RevokeSessions: decided by `decisions`, committed to the holder as ops."""

    def __init__(self, holder: SnapshotHolder, decisions: Decisions) -> None:
        self._holder = holder
        self._decisions = decisions

    def assume_role(self, caller: str, role_arn: str, session_name: str, duration_seconds: int = 0,
                    session_policy: str | None = None, tags: Mapping[str, str] | None = None,
                    context: Mapping[str, Any] | None = None, external_id: str = "") -> SessionGrant:
        """STS AssumeRole: allowed only when the role's trust policy and the caller's own policies
        allow sts:AssumeRole as AWS decides (spec 3.6); passing tags also needs sts:TagSession.

        Every key AWS derives from the AssumeRole request comes from this call's arguments, never from
        the caller's `context` (whose copies are dropped): sts:RoleSessionName, sts:ExternalId,
        aws:RequestTag/* and aws:TagKeys (see assume_role_context).
        """
        tags = dict(tags or {})
        if not isinstance(session_name, str) or not SESSION_NAME.fullmatch(session_name):
            raise InvalidInput(f"session_name: {limits.MIN_SESSION_NAME}-{limits.MAX_SESSION_NAME} characters of "
                               "letters, digits and +=,.@_-", "session_name")
        if external_id and not EXTERNAL_ID.fullmatch(external_id):
            raise InvalidInput("external_id: 2-1224 characters of letters, digits and +=,.@:/_-", "external_id")
        check_tags(tags, "tags", limits.MAX_SESSION_TAGS)
        reserved = [k for k in tags if k.lower().startswith("aws:")]
        if reserved:
            raise InvalidInput(f"tags: session tag keys cannot start with aws: (reserved for AWS); got {reserved[0]!r}",
                               "tags")
        parsed_policy = None
        if session_policy:
            session_policy, parsed_policy = validated_policy(session_policy, PolicyType.SESSION, "session_policy")
        snap = self._holder.snapshot
        role = principal_of_arn(snap.state, "role", role_arn)
        denied = PermissionDenied(f"{caller} is not authorized to perform sts:AssumeRole on resource {role_arn}",
                                  "role_arn")
        if role is None:
            raise denied   # as IAM does: a missing role looks like a refused one
        if parse_requester(caller).kind == "root":
            raise PermissionDenied(f"{caller} is an account root: roles cannot be assumed by root (as AWS refuses "
                                   "it); call as an IAM user or role session", "caller")
        chained = caller.startswith("arn:aws:sts::") and ":assumed-role/" in caller
        max_duration = 3600 if chained else role.max_session
        duration = duration_seconds or limits.DEFAULT_SESSION_SECONDS
        if not limits.MIN_SESSION_SECONDS <= duration <= max_duration:
            raise InvalidInput(f"duration_seconds must be {limits.MIN_SESSION_SECONDS}-{max_duration} for this role"
                               f"{' (role chaining caps sessions at 1 hour)' if chained else ''}; got {duration}",
                               "duration_seconds")
        ctx, derived = assume_role_context(context or {}, session_name, tags, external_id)
        answer = self._decisions.authorize(caller, "sts:AssumeRole", role_arn, ctx, trusted_context=derived)
        if not answer.result.allowed:
            raise denied
        if tags and not self._decisions.authorize(caller, "sts:TagSession", role_arn, ctx,
                                       trusted_context=derived).result.allowed:
            raise PermissionDenied(f"{caller} is not authorized to perform sts:TagSession on resource "
                                   f"{role_arn}; session tags need it in the trust policy", "tags")
        now = self._holder.clock()
        session_arn = f"arn:aws:sts::{role.account}:assumed-role/{role.name}/{session_name}"
        key_id = "ASIA" + random_token(string.ascii_uppercase + string.digits, 16)
        secret = random_token(string.ascii_letters + string.digits + "+/", 40)
        token = random_token(string.ascii_letters + string.digits, 96)
        op = CreateSession(arn=session_arn, role_arn=role.arn, role_id=role.unique_id, session_name=session_name,
                           issued=now, expires=now + duration, policy=session_policy or None, tags=tags,
                           access_key_id=key_id, secret=secret, session_token_sha256=token_digest(token).hex(),
                           source=caller)
        if session_policy:
            CompileHook(self._holder.compiler)(session_policy_name(session_arn), session_policy, parsed_policy)
        self._commit(op)
        return SessionGrant(session_arn, f"{role.unique_id}:{session_name}", now + duration, key_id, secret, token)

    def revoke_sessions(self, account: str, role: str) -> float:
        """IAM's "revoke active sessions": every session of the role issued before now is refused from now
        on (an implicit deny saying so); sessions issued afterwards are not affected. Returns the time."""
        at = self._holder.clock()
        self._commit(RevokeSessions(account=account, name=role, at=at))
        return at

    def _commit(self, op: Op) -> None:
        self._holder.commit(op.record())    # the holder takes the op's record (the form it logs)
