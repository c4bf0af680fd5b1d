"""Proto <-> domain conversion for every RPC, in one place: messages in, engine/store values out, and back."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from ..evaluate import Decision, MatchedStatement, PolicySet, Request, Result
from ..policy import limits
from ..policy.conditions import MULTIVALUED_KEYS
from ..policy.errors import LimitError, RequestError
from ..policy.jsontext import load_document
from ..policy.model import Policy, PolicyType, compile_policy, statement_shape_problem
from ..policy.validate import ValidationReport, validate_document
from ..store import SessionGrant, StoreStatus
from ..store.state import ManagedPolicy
from ..v1 import authz_pb2 as pb
from . import settings

DECISION_TO_PROTO: dict[Decision, pb.Decision] = {
    Decision.ALLOW: pb.DECISION_ALLOW,
    Decision.EXPLICIT_DENY: pb.DECISION_EXPLICIT_DENY,
    Decision.IMPLICIT_DENY: pb.DECISION_IMPLICIT_DENY,
}


# ------------------------------------------------------------------ request context


def context_from_proto(context: Mapping[str, pb.ContextValues]) -> dict[str, str | list[str]]:
    """One value stays a plain string, as a JSON request context would have it; several, or any number
    for a key IAM defines as multivalued (aws:TagKeys, ...), stay a list."""
    out: dict[str, str | list[str]] = {}
    for key, entry in context.items():
        values = list(entry.values)
        out[key] = values[0] if len(values) == 1 and key.lower() not in MULTIVALUED_KEYS else values
    return out


# ------------------------------------------------------------------ decisions


def matched_to_proto(m: MatchedStatement) -> pb.MatchedStatement:
    return pb.MatchedStatement(policy_type=m.policy_type, policy_name=m.policy_name, sid=m.sid, index=m.index,
                               effect=m.effect)


def result_to_proto(result: Result, revision: int, cached: bool, explain: bool) -> pb.AuthorizeResponse:
    resp = pb.AuthorizeResponse(decision=DECISION_TO_PROTO[result.decision],
                                deciding_statements=[matched_to_proto(m) for m in result.deciding],
                                revision=revision, cached=cached)
    if explain:
        resp.explanation.CopyFrom(pb.Explanation(
            decided_by=result.decided_by, per_policy_type=dict(result.per_type),
            resource_grant_kind=result.grant_kind, same_account=result.same_account,
            missing_context_keys=list(result.missing_keys), notes=list(result.notes),
            blocked_by=result.blocked_by))
    return resp


# ------------------------------------------------------------------ Simulate


def _policy(doc: pb.PolicyDocument, default_name: str, field: str, ptype: PolicyType, validate: bool) -> Policy:
    text = doc.document
    if not text.strip():
        raise RequestError(f"{field}.document", "a policy document (JSON text) is required")
    if len(text) > settings.MAX_SIMULATE_DOCUMENT_CHARS:
        raise LimitError(f"{field}.document", f"{len(text)} characters; at most "
                                              f"{settings.MAX_SIMULATE_DOCUMENT_CHARS} (MAX_SIMULATE_DOCUMENT_CHARS)")
    name = doc.name or default_name
    if validate:
        report = validate_document(text, ptype)
        if not report.valid:
            detail = "; ".join(str(p) for p in report.errors[:5])
            raise RequestError(f"{field}.document", f"invalid {ptype.value} policy: {detail}")
        return compile_policy(report.document, name)
    # Without validation the document need not follow the policy grammar, but it must still be one
    # unambiguous JSON object (no member given twice: which copy would count?) of bounded shape.
    value, problems = load_document(text, max_chars=settings.MAX_SIMULATE_DOCUMENT_CHARS)
    if value is None:
        raise RequestError(f"{field}.document", "; ".join(str(p) for p in problems[:5]) + "; send strict JSON: "
                           f"one object, well-formed, at most {limits.MAX_JSON_DEPTH} levels deep, each member "
                           "once per object, finite numbers")
    longest = _longest_array(value)
    if longest > limits.MAX_LIST_ITEMS:
        raise LimitError(f"{field}.document", f"an array has {longest} entries; at most {limits.MAX_LIST_ITEMS} "
                                              "(MAX_LIST_ITEMS): use wildcards or split the statement")
    problem = statement_shape_problem(value)
    if problem:
        raise RequestError(f"{field}.document", f"{problem}; send each statement as a JSON object")
    return compile_policy(value, name)


def _longest_array(root: Any) -> int:
    """Entries of the longest array anywhere in a parsed JSON value (walked without recursion)."""
    longest, stack = 0, [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            longest = max(longest, len(node))
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
    return longest


def _levels(levels: Sequence[pb.PolicyLevel], kind: str, ptype: PolicyType, validate: bool
            ) -> tuple[tuple[Policy, ...], ...] | None:
    if not levels:
        return None
    return tuple(tuple(_policy(d, f"{kind}{i}.{j}", f"{kind}_levels[{i}].policies[{j}]", ptype, validate)
                       for j, d in enumerate(level.policies))
                 for i, level in enumerate(levels))


def simulate_input(req: pb.SimulateRequest) -> tuple[Request, PolicySet, bool]:
    """The request and the inline policies of a SimulateRequest; default policy names follow the
    conformance runner's (identity0, resource, boundary, session, scp0.0, rcp0.0)."""
    r = req.request
    validate = req.validate
    policies = PolicySet(
        identity=tuple(_policy(d, f"identity{i}", f"identity_policies[{i}]", PolicyType.IDENTITY, validate)
                       for i, d in enumerate(req.identity_policies)),
        resource=(_policy(req.resource_policy, "resource", "resource_policy", PolicyType.RESOURCE, validate)
                  if req.HasField("resource_policy") else None),
        boundary=(_policy(req.permissions_boundary, "boundary", "permissions_boundary", PolicyType.BOUNDARY,
                          validate) if req.HasField("permissions_boundary") else None),
        session=((_policy(req.session_policy, "session", "session_policy", PolicyType.SESSION, validate),)
                 if req.HasField("session_policy") else None),
        scp_levels=_levels(req.scp_levels, "scp", PolicyType.SCP, validate),
        rcp_levels=_levels(req.rcp_levels, "rcp", PolicyType.RCP, validate),
    )
    request = Request(r.principal, r.action, r.resource, context_from_proto(r.context),
                      req.resource_account or None)
    return request, policies, r.explain


def simulate_document_count(req: pb.SimulateRequest) -> int:
    return (len(req.identity_policies) + sum(1 for f in ("resource_policy", "permissions_boundary", "session_policy")
                                             if req.HasField(f))
            + sum(len(level.policies) for level in (*req.scp_levels, *req.rcp_levels)))


# ------------------------------------------------------------------ AssumeRole


def tags_from_proto(tags: Iterable[pb.Tag], field: str = "tags") -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        if t.key in out:
            raise RequestError(field, f"tag key {t.key!r} appears twice")
        out[t.key] = t.value
    return out


def grant_to_proto(grant: SessionGrant) -> pb.AssumeRoleResponse:
    return pb.AssumeRoleResponse(assumed_role_arn=grant.assumed_role_arn, assumed_role_id=grant.assumed_role_id,
                                 expiration_unix=int(grant.expiration), access_key_id=grant.access_key_id,
                                 secret_access_key=grant.secret_access_key, session_token=grant.session_token,
                                 decision=pb.DECISION_ALLOW)


# ------------------------------------------------------------------ admin


def policy_info(policy: ManagedPolicy, attachments: int) -> pb.PolicyInfo:
    return pb.PolicyInfo(arn=policy.arn, name=policy.name, default_version=policy.default_version,
                         versions=[v for v, _ in policy.versions], document=policy.document,
                         attachment_count=attachments)


def status_to_proto(status: StoreStatus) -> pb.StatusResponse:
    cache = status.cache
    return pb.StatusResponse(revision=status.revision, serving=status.ready, last_load_error=status.last_load_error,
                             last_load_unix=int(status.last_load_time), counts=dict(status.counts),
                             cache_hits=cache.get("hits", 0), cache_misses=cache.get("misses", 0),
                             cache_size=cache.get("size", 0), cache_capacity=cache.get("capacity", 0),
                             store_error=status.store_error)


def validation_to_proto(report: ValidationReport) -> pb.ValidatePolicyResponse:
    return pb.ValidatePolicyResponse(
        valid=report.valid,
        errors=[pb.Problem(path=p.path, message=p.message) for p in report.errors],
        warnings=[pb.Problem(path=p.path, message=p.message) for p in report.warnings])
