"""The IAM state: immutable snapshots, bundle and database loading, the decision cache, and the Store facade."""

from .errors import (AlreadyExists, Conflict, InvalidInput, NotFound, PermissionDenied, QuotaExceeded,
                     StorageFailure, StoreError)
from .store import Answer, PreparedContext, SessionGrant, Store, StoreConfig, StoreStatus

__all__ = ["Store", "StoreConfig", "Answer", "PreparedContext", "SessionGrant", "StoreStatus", "StoreError", "NotFound",
           "AlreadyExists", "InvalidInput", "QuotaExceeded", "Conflict", "PermissionDenied", "StorageFailure"]
