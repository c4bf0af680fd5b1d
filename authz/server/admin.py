"""The PolicyAdmin servicer: IAM-shaped admin calls turned into store ops, answers turned back into messages."""

from __future__ import annotations

from typing import Mapping, TypeAlias

import grpc

from .. import native
from ..policy.errors import RequestError
from ..store import Store
from ..store.ops import (AddUserToGroup, AttachPolicy, CreatePolicyVersion, DeleteAccessKey, DeleteInlinePolicy,
                         DeletePolicy, DeletePrincipal, DeleteResource, DetachPolicy, PutInlinePolicy,
                         RemoveUserFromGroup, SetPermissionsBoundary, SetTrustPolicy, TagPrincipal)
from ..policy.arn import account_of
from ..v1 import authz_pb2 as pb
from ..v1 import authz_pb2_grpc as pb_grpc
from . import convert
from .access import LiveAnalysis
from .errors import rpc

EMPTY = pb.Empty()
Ctx: TypeAlias = grpc.ServicerContext


def addressed(ref: pb.PrincipalRef, field: str = "principal") -> tuple[str, str, str]:
    """(account, kind, name) of the user, group or role an admin call is addressed to."""
    prefix = f"{field}." if field else ""
    if not ref.kind:
        raise RequestError(f"{prefix}kind", "required: user, group or role")
    if not ref.name:
        raise RequestError(f"{prefix}name", "required")
    return ref.account, ref.kind, ref.name


class PolicyAdmin(pb_grpc.PolicyAdminServicer):
    def __init__(self, store: Store, addresses: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.analysis = LiveAnalysis(store)
        self.addresses = addresses if addresses is not None else {}   # the listeners as bound (app.py fills it)

    def _info(self, arn: str) -> pb.PolicyInfo:
        return convert.policy_info(self.store.policy(arn), self.store.attachment_count(arn))

    # ------------------------------------------------------------ managed policies

    @rpc
    def CreatePolicy(self, request: pb.CreatePolicyRequest, context: Ctx) -> pb.PolicyInfo:
        pol = self.store.create_policy(request.account, request.name, request.document, request.path or "/",
                                       request.description)
        return convert.policy_info(pol, 0)

    @rpc
    def CreatePolicyVersion(self, request: pb.CreatePolicyVersionRequest, context: Ctx) -> pb.PolicyInfo:
        self.store.apply(CreatePolicyVersion(arn=request.arn, document=request.document,
                                             set_as_default=request.set_as_default))
        return self._info(request.arn)

    @rpc
    def DeletePolicy(self, request: pb.PolicyRef, context: Ctx) -> pb.Empty:
        self.store.apply(DeletePolicy(arn=request.arn))
        return EMPTY

    @rpc
    def GetPolicy(self, request: pb.PolicyRef, context: Ctx) -> pb.PolicyInfo:
        return self._info(request.arn)

    @rpc
    def ListPolicies(self, request: pb.ListPoliciesRequest, context: Ctx) -> pb.ListPoliciesResponse:
        policies = self.store.snapshot.state.policies
        arns = sorted(a for a in policies if not request.account or account_of(a) == request.account)
        return pb.ListPoliciesResponse(policies=[self._info(a) for a in arns])

    # ------------------------------------------------------------ principals' policies

    @rpc
    def PutInlinePolicy(self, request: pb.PutInlinePolicyRequest, context: Ctx) -> pb.Empty:
        account, kind, name = addressed(request.principal)
        self.store.apply(PutInlinePolicy(account=account, kind=kind, name=name, policy_name=request.policy_name,
                                         document=request.document))
        return EMPTY

    @rpc
    def DeleteInlinePolicy(self, request: pb.DeleteInlinePolicyRequest, context: Ctx) -> pb.Empty:
        account, kind, name = addressed(request.principal)
        self.store.apply(DeleteInlinePolicy(account=account, kind=kind, name=name, policy_name=request.policy_name))
        return EMPTY

    @rpc
    def AttachPolicy(self, request: pb.AttachPolicyRequest, context: Ctx) -> pb.Empty:
        account, kind, name = addressed(request.principal)
        self.store.apply(AttachPolicy(account=account, kind=kind, name=name, policy_arn=request.policy_arn))
        return EMPTY

    @rpc
    def DetachPolicy(self, request: pb.AttachPolicyRequest, context: Ctx) -> pb.Empty:
        account, kind, name = addressed(request.principal)
        self.store.apply(DetachPolicy(account=account, kind=kind, name=name, policy_arn=request.policy_arn))
        return EMPTY

    @rpc
    def SetPermissionsBoundary(self, request: pb.SetBoundaryRequest, context: Ctx) -> pb.Empty:
        account, kind, name = addressed(request.principal)
        self.store.apply(SetPermissionsBoundary(account=account, kind=kind, name=name,
                                                policy_arn=request.policy_arn or None))
        return EMPTY

    # ------------------------------------------------------------ users, groups, roles

    # Each principal gets a fresh random unique id: one re-created under a deleted one's name is another
    # identity, and nothing bound to the old id (keys, sessions) applies to it.

    @rpc
    def CreateUser(self, request: pb.CreateUserRequest, context: Ctx) -> pb.PrincipalInfo:
        p = self.store.create_principal("user", request.account, request.name, path=request.path,
                                        tags=convert.tags_from_proto(request.tags))
        return pb.PrincipalInfo(arn=p.arn, unique_id=p.unique_id)

    @rpc
    def CreateGroup(self, request: pb.CreateGroupRequest, context: Ctx) -> pb.PrincipalInfo:
        p = self.store.create_principal("group", request.account, request.name, path=request.path)
        return pb.PrincipalInfo(arn=p.arn, unique_id=p.unique_id)

    @rpc
    def CreateRole(self, request: pb.CreateRoleRequest, context: Ctx) -> pb.PrincipalInfo:
        p = self.store.create_principal("role", request.account, request.name, path=request.path,
                                        trust_policy=request.trust_policy,
                                        max_session_duration=request.max_session_duration,
                                        tags=convert.tags_from_proto(request.tags))
        return pb.PrincipalInfo(arn=p.arn, unique_id=p.unique_id)

    @rpc
    def DeletePrincipal(self, request: pb.PrincipalRef, context: Ctx) -> pb.Empty:
        account, kind, name = addressed(request, field="")
        self.store.apply(DeletePrincipal(account=account, kind=kind, name=name))
        return EMPTY

    @rpc
    def SetTrustPolicy(self, request: pb.SetTrustPolicyRequest, context: Ctx) -> pb.Empty:
        if not request.role:
            raise RequestError("role", "required: the role name")
        self.store.apply(SetTrustPolicy(account=request.account, name=request.role, document=request.trust_policy))
        return EMPTY

    @rpc
    def AddUserToGroup(self, request: pb.AddUserToGroupRequest, context: Ctx) -> pb.Empty:
        self.store.apply(AddUserToGroup(account=request.account, user=request.user, group=request.group))
        return EMPTY

    @rpc
    def RemoveUserFromGroup(self, request: pb.AddUserToGroupRequest, context: Ctx) -> pb.Empty:
        self.store.apply(RemoveUserFromGroup(account=request.account, user=request.user, group=request.group))
        return EMPTY

    @rpc
    def TagPrincipal(self, request: pb.TagPrincipalRequest, context: Ctx) -> pb.Empty:
        account, kind, name = addressed(request.principal)
        self.store.apply(TagPrincipal(account=account, kind=kind, name=name, tags=convert.tags_from_proto(request.tags),
                                      remove_keys=list(request.remove_keys)))
        return EMPTY

    # ------------------------------------------------------------ credentials and resources

    @rpc
    def CreateAccessKey(self, request: pb.AccessKeyRequest, context: Ctx) -> pb.AccessKey:
        kid, secret, user_arn = self.store.create_access_key(request.account, request.user)
        return pb.AccessKey(access_key_id=kid, secret_access_key=secret, user_arn=user_arn)

    @rpc
    def DeleteAccessKey(self, request: pb.DeleteAccessKeyRequest, context: Ctx) -> pb.Empty:
        self.store.apply(DeleteAccessKey(id=request.access_key_id))
        return EMPTY

    @rpc
    def UpdateAccessKey(self, request: pb.UpdateAccessKeyRequest, context: Ctx) -> pb.Empty:
        if not request.access_key_id:
            raise RequestError("access_key_id", "required")
        self.store.update_access_key(request.access_key_id, request.status)
        return EMPTY

    @rpc
    def RevokeSessions(self, request: pb.RevokeSessionsRequest, context: Ctx) -> pb.RevokeSessionsResponse:
        if not request.role:
            raise RequestError("role", "required: the role name")
        at = self.store.revoke_sessions(request.account, request.role)
        return pb.RevokeSessionsResponse(revoked_before_unix=int(at))

    @rpc
    def RegisterResource(self, request: pb.RegisterResourceRequest, context: Ctx) -> pb.ResourceInfo:
        if not request.arn:
            for field in ("account", "region", "name"):
                if not getattr(request, field):
                    raise RequestError(field, "required when arn is empty (the ARN is minted from account, "
                                              "region, type and name)")
        arn = self.store.register_resource(request.account, request.region, request.type, request.name,
                                           request.arn, dict(request.tags), request.resource_policy or None)
        return pb.ResourceInfo(arn=arn, tags=dict(request.tags))

    @rpc
    def DeleteResource(self, request: pb.DeleteResourceRequest, context: Ctx) -> pb.Empty:
        self.store.apply(DeleteResource(arn=request.arn))
        return EMPTY

    # ------------------------------------------------------------ operations

    @rpc
    def Reload(self, request: pb.Empty, context: Ctx) -> pb.ReloadResponse:
        ok, error = self.store.reload()
        return pb.ReloadResponse(revision=self.store.revision, ok=ok, error=error)

    @rpc
    def Status(self, request: pb.Empty, context: Ctx) -> pb.StatusResponse:
        status = convert.status_to_proto(self.store.status())
        status.watch_address = self.addresses.get("watch", "")
        status.engine = native.mode()
        return status

    @rpc
    def ValidatePolicy(self, request: pb.ValidatePolicyRequest, context: Ctx) -> pb.ValidatePolicyResponse:
        return convert.validation_to_proto(self.store.validate_policy(request.policy_type, request.document))

    # ------------------------------------------------------------ access analysis (access.py)

    @rpc
    def WhoCan(self, request: pb.WhoCanRequest, context: Ctx) -> pb.WhoCanResponse:
        return self.analysis.who_can(request)

    @rpc
    def AccessOf(self, request: pb.AccessOfRequest, context: Ctx) -> pb.AccessOfResponse:
        return self.analysis.access_of(request)
