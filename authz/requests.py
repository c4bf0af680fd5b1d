"""Authorization requests from the outside: named limits and field checks, shared by every entry point."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from .policy.errors import LimitError, RequestError

MAX_ARN_CHARS = 2_048                 # principal and resource ARNs (IAM API ARN parameters: 20-2,048)
MAX_ACTION_CHARS = 256
MAX_CONTEXT_KEYS = 256                # distinct condition keys in one request
MAX_CONTEXT_KEY_CHARS = 256
MAX_CONTEXT_VALUES = 128              # values of one multivalued key (aws:TagKeys: at most 50 tags anyway)
MAX_CONTEXT_VALUE_CHARS = 4_096       # one value
MAX_BATCH = 1_000                     # requests in one AuthorizeBatch

# Grammars, matched whole with fullmatch (a `$` would also accept a trailing newline) and ASCII only.
_ACTION = re.compile(r"[A-Za-z0-9.-]+:[A-Za-z0-9]+")
_PRINCIPAL_ARN = re.compile(r"arn:[\x21-\x7e]+")     # IAM and STS ARNs are printable ASCII without spaces


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
    if principal != "anonymous" and not _PRINCIPAL_ARN.fullmatch(principal):
        raise RequestError("principal", f"must be an ARN (printable ASCII, no spaces) or 'anonymous', "
                                        f"got {principal[:80]!r}")
    if not action:
        raise RequestError("action", "required, e.g. kinesisvideo:PutMedia")
    if len(action) > MAX_ACTION_CHARS:
        raise LimitError("action", f"longer than {MAX_ACTION_CHARS} characters")
    if not _ACTION.fullmatch(action):
        raise RequestError("action", f"must be service:Action without wildcards, e.g. kinesisvideo:GetMedia; "
                                     f"got {action[:80]!r}")
    if not resource:
        raise RequestError("resource", "required: an ARN, or '*' for actions without a resource type")
    if len(resource) > MAX_ARN_CHARS:
        raise LimitError("resource", f"longer than {MAX_ARN_CHARS} characters")
    if resource != "*" and (not resource.startswith("arn:") or resource.count(":") < 5):
        raise RequestError("resource", f"must be '*' or an ARN (arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE); "
                                       f"got {resource[:80]!r}")
    if not resource.isprintable():
        raise RequestError("resource", f"must contain only printable characters (no control, format or line "
                                       f"separator characters); got {resource[:80]!r}")


_VALUE_TYPES = (str, bool, int, float)


def check_context(context: Mapping[str, Any]) -> None:
    """Limits, types, and one spelling per key.

    Key names are case-insensitive (spec 1.9), so `aws:SourceIp` and `AWS:SOURCEIP` are one key: a
    request naming it twice is ambiguous (which value did the caller mean?) and is refused, as a
    policy naming a member twice is. Several values of one key are sent as one list.
    """
    if len(context) > MAX_CONTEXT_KEYS:
        raise LimitError("context", f"{len(context)} keys; at most {MAX_CONTEXT_KEYS} are accepted")
    try:
        _check_entries(context.items())
    except (RequestError, LimitError):
        # The same request must get the same error whatever order its keys arrive in (a protobuf map
        # has none): the first fault in sorted key order is the one reported.
        _check_entries(sorted(context.items(), key=lambda kv: str(kv[0])))
        raise


def _check_entries(items: Iterable[tuple[Any, Any]]) -> None:
    seen: dict[str, str] = {}
    for key, value in items:
        if key.__class__ is not str:
            raise RequestError("context", f"key names are strings; got {type(key).__name__}")
        if not key or len(key) > MAX_CONTEXT_KEY_CHARS:
            raise LimitError("context", f"key names are 1-{MAX_CONTEXT_KEY_CHARS} characters; got {key[:40]!r}...")
        if not key.isprintable():
            raise RequestError("context", f"key name {key[:40]!r} has a control, format or line separator "
                                          "character; key names are printable text such as aws:SourceIp")
        other = seen.setdefault(key.lower(), key)
        if other != key:
            raise RequestError(f"context[{key}]", f"names the same key as {other!r} (condition key names are "
                                                  "case-insensitive); send the key once, with a list for "
                                                  "several values")
        values = value if value.__class__ in (list, tuple) else (value,)
        if len(values) > MAX_CONTEXT_VALUES:
            raise LimitError(f"context[{key}]", f"{len(values)} values; at most {MAX_CONTEXT_VALUES}")
        for v in values:
            if v.__class__ not in _VALUE_TYPES:
                raise RequestError(f"context[{key}]", "values must be strings (or booleans and numbers, "
                                                      f"sent as their text); got {type(v).__name__}")
            if v.__class__ is str and len(v) > MAX_CONTEXT_VALUE_CHARS:
                raise LimitError(f"context[{key}]", f"a value is longer than {MAX_CONTEXT_VALUE_CHARS} characters")
