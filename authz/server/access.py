"""The PolicyAdmin WhoCan and AccessOf calls: access analysis (authz.analysis) on the snapshot being served."""

from __future__ import annotations

import threading

from ..analysis import Analyzer
from ..analysis.engine import canonical_action
from ..analysis.classes import ClassLimit
from ..policy.errors import LimitError, RequestError
from ..requests import MAX_ARN_CHARS
from ..store import Store
from ..store.snapshot import Snapshot
from ..v1 import authz_pb2 as pb


def _required(value: str, field: str, what: str) -> str:
    if not value:
        raise RequestError(field, f"required: {what}")
    if len(value) > MAX_ARN_CHARS:
        raise RequestError(field, f"at most {MAX_ARN_CHARS} characters")
    return value


class LiveAnalysis:
    """One Analyzer per served snapshot (its groups and answers are reused until the state changes)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._current: tuple[Snapshot, Analyzer] | None = None

    def analyzer(self) -> Analyzer:
        snap = self._store.snapshot
        with self._lock:
            current = self._current
            if current is None or current[0] is not snap:
                current = self._current = (snap, Analyzer(snap, self._store.config.options))
            return current[1]

    def who_can(self, request: pb.WhoCanRequest) -> pb.WhoCanResponse:
        action = _required(request.action, "action", "service:Action, e.g. kinesisvideo:PutMedia")
        resource = _required(request.resource, "resource", "the resource ARN")
        an = self.analyzer()
        result = an.who_can(canonical_action(action), resource)
        return pb.WhoCanResponse(
            principals=[pb.AccessReach(principal=r.principal, kind=r.kind, via=list(r.via), conditional=r.conditional,
                                       conditions=list(r.conditions),
                                       statements=[pb.MatchedStatement(policy_type=s["policyType"],
                                                                       policy_name=s["policyName"], sid=s["sid"],
                                                                       index=s["index"], effect=s["effect"])
                                                   for s in r.statements])
                        for r in result.principals],
            owner_root=result.owner_root, revision=an.base.revision)

    def access_of(self, request: pb.AccessOfRequest) -> pb.AccessOfResponse:
        principal = _required(request.principal, "principal", "a user, role or account root ARN, or *")
        an = self.analyzer()
        try:
            access = an.access_of(principal)
        except ClassLimit as exc:
            raise LimitError("principal", str(exc)) from None
        return pb.AccessOfResponse(
            principal=access.principal, kind=access.kind, known=access.known, revision=an.base.revision,
            grants=[pb.AccessGrant(actions=list(g.actions), resources=list(g.resources), denied=list(g.denied),
                                   conditional=g.conditional, conditions=list(g.conditions),
                                   examples=list(g.examples)) for g in access.grants])
