"""Every decision case of the shared conformance suite through the engine and through `authz simulate`."""

from __future__ import annotations

import io
import json

import pytest

from authz import cli
from authz.evaluate import evaluate
from tests.conformance import load_cases, policy_set, request

CASES = load_cases("decisions")


def test_the_suite_is_all_here() -> None:
    assert len(CASES) >= 180
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_decision(case: dict) -> None:
    ps, req = policy_set(case), request(case)
    fast = evaluate(req, ps)
    full = evaluate(req, ps, explain=True)
    assert fast.decision.value == case["expect"], case["rule"]
    assert full.decision == fast.decision
    if case["expect"] == "ExplicitDeny":
        assert fast.deciding and all(m.effect == "Deny" for m in fast.deciding)
    if case["expect"] == "Allow" and fast.decided_by not in ("root",):
        assert fast.deciding and all(m.effect == "Allow" for m in fast.deciding)


def test_simulate_command_gives_the_engine_answers_in_order() -> None:
    stdin = io.StringIO("".join(json.dumps(c) + "\n" for c in CASES))
    stdout = io.StringIO()
    assert cli.main(["simulate"], stdin=stdin, stdout=stdout) == 0
    lines = [json.loads(x) for x in stdout.getvalue().splitlines()]
    assert [x["id"] for x in lines] == [c["id"] for c in CASES]
    for line, case in zip(lines, CASES):
        assert line["error"] is None
        assert line["decision"] == case["expect"], case["id"]
