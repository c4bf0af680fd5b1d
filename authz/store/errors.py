"""Errors of the store; the server maps each class to one gRPC status code."""

from __future__ import annotations

from ..policy.errors import AuthzError


class StoreError(AuthzError):
    """Root of store errors. `field` names the request field at fault, when there is one."""

    def __init__(self, message: str, field: str = "") -> None:
        self.field = field
        super().__init__(message)


class NotFound(StoreError):
    """The named entity does not exist (gRPC NOT_FOUND)."""


class AlreadyExists(StoreError):
    """An entity with that name exists already (gRPC ALREADY_EXISTS)."""


class InvalidInput(StoreError):
    """The request is malformed or a policy is invalid (gRPC INVALID_ARGUMENT)."""

    def __init__(self, message: str, field: str = "", problems: tuple = ()) -> None:  # type: ignore[type-arg]
        super().__init__(message, field)
        self.problems = problems


class QuotaExceeded(StoreError):
    """A named limit would be exceeded (gRPC RESOURCE_EXHAUSTED)."""


class Conflict(StoreError):
    """The request contradicts the current state, e.g. deleting an attached policy (gRPC FAILED_PRECONDITION)."""


class PermissionDenied(StoreError):
    """An AssumeRole that IAM would refuse (gRPC PERMISSION_DENIED)."""


class StorageFailure(StoreError):
    """The state directory could not be written; nothing was changed (gRPC UNAVAILABLE)."""
