"""Loading the conformance cases (carried in tests/data/conformance), for every runner that drives them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from authz.cli import case_policy_set, case_request
from tests.testdata import CONFORMANCE_DIR


def conformance_dir() -> Path:
    return CONFORMANCE_DIR


def load_cases(name: str) -> list[dict[str, Any]]:
    """Every case of one JSON Lines file (`decisions`, `validation` or `http-mapping`)."""
    path = conformance_dir() / f"{name}.jsonl"
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# The decisions.jsonl format is also `authz simulate`'s input; one reader serves both.
policy_set = case_policy_set
request = case_request


def documents(case: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(role, document) pairs of a case, e.g. ("identity", {...}); for tools that take raw documents."""
    for p in case.get("identityPolicies", []):
        yield "identity", p
    for key, role in (("resourcePolicy", "resource"), ("permissionBoundary", "boundary"),
                      ("sessionPolicy", "session")):
        if key in case:
            yield role, case[key]
