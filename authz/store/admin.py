"""Admin operations: one op applied (validated, logged, published) and the IAM-shaped writes and reads built on it."""

from __future__ import annotations

import string
from typing import Any, Mapping

from ..policy.model import PolicyType
from ..policy.validate import ValidationReport, validate_document
from .errors import InvalidInput, NotFound
from .holder import SnapshotHolder
from .ops import CreateAccessKey, CreatePolicy, CreatePrincipal, Op, RegisterResource, UpdateAccessKey, parse_op
from .state import ATTACHED, IamState, ManagedPolicy, Principal, attachers, policy_arn, random_token, resource_arn


class Admin:
    """Admin writes as ops committed to the holder, and the reads the admin calls answer from its snapshot."""

    def __init__(self, holder: SnapshotHolder) -> None:
        self._holder = holder

    def apply(self, op: Op | Mapping[str, Any]) -> IamState:
        """Apply one admin op (ops.py: the op classes, or their records as mappings)."""
        return self._commit(op if isinstance(op, Op) else parse_op(op))

    def _commit(self, op: Op) -> IamState:
        # The holder takes the op's record (the form it logs).
        return self._holder.commit(op.record())

    def create_policy(self, account: str, name: str, document: str, path: str = "/", description: str = ""
                      ) -> ManagedPolicy:
        state = self._commit(CreatePolicy(account=account, name=name, path=path or "/", document=document,
                                          description=description))
        return state.policies[policy_arn(account, path or "/", name)]

    def create_access_key(self, account: str, user: str) -> tuple[str, str, str]:
        kid = "AKIA" + random_token(string.ascii_uppercase + string.digits, 16)
        secret = random_token(string.ascii_letters + string.digits + "+/", 40)
        state = self._commit(CreateAccessKey(account=account, user=user, id=kid, secret=secret))
        return kid, secret, state.access_keys[kid].principal

    def update_access_key(self, access_key_id: str, status: str) -> None:
        """IAM's UpdateAccessKey: Active or Inactive (an Inactive key fails SigV4 verification)."""
        self._commit(UpdateAccessKey(id=access_key_id, status=status))

    def create_principal(self, kind: str, account: str, name: str, **fields: Any) -> Principal:
        """CreateUser/CreateGroup/CreateRole: the principal gets a fresh random unique id, carried in the op."""
        self._commit(CreatePrincipal(kind=kind, account=account, name=name, **fields))
        return self.principal(account, kind, name)

    def register_resource(self, account: str, region: str, rtype: str, name: str, arn: str = "",
                          tags: Mapping[str, str] | None = None, policy: str | None = None) -> str:
        if not arn:
            arn = resource_arn(self._holder.config.partition, region, account, rtype, name,
                               int(self._holder.clock() * 1000))
        self._commit(RegisterResource(type=rtype, arn=arn, tags=dict(tags or {}), policy=policy or None))
        return arn

    def policy(self, arn: str) -> ManagedPolicy:
        pol = self._holder.snapshot.state.policies.get(arn)
        if pol is None:
            raise NotFound(f"policy {arn!r} does not exist", "arn")
        return pol

    def principal(self, account: str, kind: str, name: str) -> Principal:
        acct = self._holder.snapshot.state.accounts.get(account)
        if acct is None or kind not in ("user", "group", "role"):
            raise NotFound(f"{kind} {name!r} does not exist in account {account}", "name")
        p = acct.table(kind).get(name.lower())
        if p is None or p.name != name:
            raise NotFound(f"{kind} {name!r} does not exist in account {account}", "name")
        return p

    def attachment_count(self, arn: str) -> int:
        """How many users, groups and roles attach the managed policy (boundaries not counted, as IAM's)."""
        return len(attachers(self._holder.snapshot.state, arn, ATTACHED))

    @staticmethod
    def validate_policy(policy_type: str, document: str) -> ValidationReport:
        try:
            ptype = PolicyType.parse(policy_type or "identity")
        except ValueError as exc:
            raise InvalidInput(str(exc), "policy_type") from None
        return validate_document(document, ptype)
