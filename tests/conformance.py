"""Loading the shared conformance cases (../shared/conformance), for every runner that drives them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from authz.evaluate import PolicySet, Request
from authz.policy import compile_policy


def conformance_dir() -> Path:
    env = os.environ.get("AUTHZ_CONFORMANCE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "conformance"


def load_cases(name: str) -> list[dict[str, Any]]:
    """Every case of one JSON Lines file (`decisions`, `validation` or `http-mapping`)."""
    path = conformance_dir() / f"{name}.jsonl"
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _levels(case: dict[str, Any], key: str, prefix: str) -> tuple[tuple[Any, ...], ...] | None:
    if key not in case:
        return None
    return tuple(tuple(compile_policy(p, f"{prefix}{i}.{j}") for j, p in enumerate(level))
                 for i, level in enumerate(case[key]))


def policy_set(case: dict[str, Any]) -> PolicySet:
    """The case's policies, compiled without validation (the README: evaluate them even if invalid)."""
    return PolicySet(
        identity=tuple(compile_policy(p, f"identity{i}") for i, p in enumerate(case.get("identityPolicies", []))),
        resource=compile_policy(case["resourcePolicy"], "resource") if "resourcePolicy" in case else None,
        boundary=compile_policy(case["permissionBoundary"], "boundary") if "permissionBoundary" in case else None,
        session=(compile_policy(case["sessionPolicy"], "session"),) if "sessionPolicy" in case else None,
        scp_levels=_levels(case, "scpLevels", "scp"),
        rcp_levels=_levels(case, "rcpLevels", "rcp"),
    )


def request(case: dict[str, Any]) -> Request:
    return Request(case["principal"], case["action"], case["resource"], case.get("context", {}),
                   case.get("resourceAccount"))


def documents(case: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(role, document) pairs of a case, e.g. ("identity", {...}); for tools that take raw documents."""
    for p in case.get("identityPolicies", []):
        yield "identity", p
    for key, role in (("resourcePolicy", "resource"), ("permissionBoundary", "boundary"),
                      ("sessionPolicy", "session")):
        if key in case:
            yield role, case[key]
