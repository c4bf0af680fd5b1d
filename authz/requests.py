"""Authorization requests from the outside: named limits and field checks, shared by every entry point."""

from __future__ import annotations

import re
from typing import Any, Mapping

from .policy.errors import LimitError, RequestError

MAX_ARN_CHARS = 2_048                 # principal and resource ARNs (IAM API ARN parameters: 20-2,048)
MAX_ACTION_CHARS = 256
MAX_CONTEXT_KEYS = 256                # distinct condition keys in one request
MAX_CONTEXT_KEY_CHARS = 256
MAX_CONTEXT_VALUES = 128              # values of one multivalued key (aws:TagKeys: at most 50 tags anyway)
MAX_CONTEXT_VALUE_CHARS = 4_096       # one value
MAX_BATCH = 1_000                     # requests in one AuthorizeBatch

_ACTION = re.compile(r"^[A-Za-z0-9.-]+:[A-Za-z0-9]+$")


def check_request(principal: str, action: str, resource: str, context: Mapping[str, Any]) -> None:
    """Raise RequestError/LimitError naming the field when the request cannot be evaluated."""
    check_target(principal, action, resource)
    check_context(context)


def check_target(principal: str, action: str, resource: str) -> None:
    """The checks of check_request on everything but the context."""
    if not principal:
        raise RequestError("principal", "required: an ARN (arn:aws:iam::ACCOUNT:user/NAME, "
                                        "arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION, ...) or 'anonymous'")
    if len(principal) > MAX_ARN_CHARS:
        raise LimitError("principal", f"longer than {MAX_ARN_CHARS} characters")
    if principal != "anonymous" and not principal.startswith("arn:"):
        raise RequestError("principal", f"must be an ARN or 'anonymous', got {principal[:80]!r}")
    if not action:
        raise RequestError("action", "required, e.g. kinesisvideo:PutMedia")
    if len(action) > MAX_ACTION_CHARS:
        raise LimitError("action", f"longer than {MAX_ACTION_CHARS} characters")
    if not _ACTION.match(action):
        raise RequestError("action", f"must be service:Action without wildcards, e.g. kinesisvideo:GetMedia; "
                                     f"got {action[:80]!r}")
    if not resource:
        raise RequestError("resource", "required: an ARN, or '*' for actions without a resource type")
    if len(resource) > MAX_ARN_CHARS:
        raise LimitError("resource", f"longer than {MAX_ARN_CHARS} characters")
    if resource != "*" and (not resource.startswith("arn:") or resource.count(":") < 5):
        raise RequestError("resource", f"must be '*' or an ARN (arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE); "
                                       f"got {resource[:80]!r}")


def check_context(context: Mapping[str, Any]) -> None:
    if len(context) > MAX_CONTEXT_KEYS:
        raise LimitError("context", f"{len(context)} keys; at most {MAX_CONTEXT_KEYS} are accepted")
    for key, value in context.items():
        if not key or len(key) > MAX_CONTEXT_KEY_CHARS:
            raise LimitError("context", f"key names are 1-{MAX_CONTEXT_KEY_CHARS} characters; got {key[:40]!r}...")
        values = value if isinstance(value, (list, tuple)) else (value,)
        if len(values) > MAX_CONTEXT_VALUES:
            raise LimitError(f"context[{key}]", f"{len(values)} values; at most {MAX_CONTEXT_VALUES}")
        for v in values:
            if not isinstance(v, (str, bool, int, float)):
                raise RequestError(f"context[{key}]", "values must be strings")
            if isinstance(v, str) and len(v) > MAX_CONTEXT_VALUE_CHARS:
                raise LimitError(f"context[{key}]", f"a value is longer than {MAX_CONTEXT_VALUE_CHARS} characters")
