"""Data-driven runner: every case of the shared validation.jsonl through the policy validator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz.policy.validate import ValidationReport, validate_document
from tests.testdata import CONFORMANCE_DIR


def load_cases() -> list[dict[str, Any]]:
    path = CONFORMANCE_DIR / "validation.jsonl"
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


CASES = load_cases()


def describe(report: ValidationReport) -> str:
    lines = [f"error   {p}" for p in report.errors] + [f"warning {p}" for p in report.warnings]
    return "\n".join(lines) or "(no problems)"


def check(case: dict[str, Any], report: ValidationReport) -> None:
    if case["expect"] == "reject":
        assert report.errors, f"{case['id']} must be rejected ({case['rule']}); the validator found no error"
    else:
        assert not report.errors, f"{case['id']} must be accepted ({case['rule']}):\n{describe(report)}"
        assert report.document is not None
    if "warns" in case:
        assert report.warnings, f"{case['id']} must warn: {case['warns']}\n{describe(report)}"


def test_case_file_is_well_formed() -> None:
    ids = [c["id"] for c in CASES]
    assert ids, "validation.jsonl has no cases"
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for c in CASES:
        assert c["expect"] in ("accept", "reject"), c["id"]
        assert ("policy" in c) != ("policyText" in c), c["id"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_validation_case(case: dict[str, Any]) -> None:
    if "policyText" in case:
        check(case, validate_document(case["policyText"], case["policyType"]))
        return
    # "Any JSON serialisation works": feed the object itself, and the same object as pretty-printed text.
    check(case, validate_document(case["policy"], case["policyType"]))
    check(case, validate_document(json.dumps(case["policy"], indent=2, ensure_ascii=False), case["policyType"]))
