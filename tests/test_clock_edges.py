"""When the clock alone can change a decision (Answer.changes_at, ClockEdges) and the Envoy path's x-authz-valid-for."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.evaluate import ClockEdges
from authz.policy.model import compile_policy
from authz.server.ext_authz import valid_for
from authz.store import Store, StoreConfig

ACCOUNT = "123456789012"
USER = f"arn:aws:iam::{ACCOUNT}:user/cam"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCOUNT}:stream/cam-1/1600000000000"
T0 = 1_800_000_000            # 2027-01-15T08:00:00Z, a whole second


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    d: Path = tmp_path_factory.mktemp("bundle")
    (d / "a.yaml").write_text(f'account: "{ACCOUNT}"\nregion: us-west-2\nusers:\n  - name: cam\n')
    s = Store(StoreConfig(bundle_dir=d, watch_interval=0))
    s.open()
    yield s
    s.close()


def _put(store: Store, statements: list[dict[str, Any]]) -> None:
    store.apply({"op": "PutInlinePolicy", "account": ACCOUNT, "kind": "user", "name": "cam", "policy_name": "p",
                 "document": json.dumps({"Version": "2012-10-17", "Statement": statements})})


def _at(store: Store, t: float) -> Any:
    store.clock = lambda: t
    return store.authorize(USER, "kinesisvideo:PutMedia", STREAM)


def test_edges_of_literal_thresholds() -> None:
    doc = compile_policy({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*",
         "Condition": {"DateGreaterThan": {"aws:CurrentTime": _iso(T0 + 10)},
                       "NumericLessThan": {"aws:EpochTime": str(T0 + 20.5)}}}]}, "p")
    edges = ClockEdges.of(doc.statements)
    assert edges.instants == (T0 + 10, T0 + 11, T0 + 20, T0 + 21)
    assert not edges.every_second
    assert edges.next_after(T0) == T0 + 10
    assert edges.next_after(T0 + 10) == T0 + 11      # the clock's second T0+10 is already decided
    assert edges.next_after(T0 + 21) == math.inf


def test_a_clock_read_whose_edges_cannot_be_listed_changes_every_second() -> None:
    for cond in ({"StringLike": {"aws:CurrentTime": "2027-*"}},
                 {"StringEquals": {"aws:userid": "${aws:EpochTime}"}}):
        doc = compile_policy({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": cond}]}, "p")
        edges = ClockEdges.of(doc.statements)
        assert edges.every_second, cond
        assert edges.next_after(T0 + 0.4) == T0 + 1


def test_a_decision_that_does_not_read_the_clock_never_changes_by_it(store: Store) -> None:
    _put(store, [{"Effect": "Allow", "Action": "kinesisvideo:PutMedia", "Resource": "*"},
                 {"Effect": "Deny", "Action": "kinesisvideo:GetMedia", "Resource": "*",
                  "Condition": {"DateGreaterThan": {"aws:CurrentTime": _iso(T0 + 5)}}}])
    a = _at(store, T0)
    assert a.result.allowed and a.changes_at == math.inf


def test_a_context_time_given_by_the_caller_is_fixed(store: Store) -> None:
    _put(store, [{"Effect": "Allow", "Action": "kinesisvideo:PutMedia", "Resource": "*",
                  "Condition": {"DateLessThan": {"aws:CurrentTime": _iso(T0 + 5)}}}])
    store.clock = lambda: T0
    given = store.authorize(USER, "kinesisvideo:PutMedia", STREAM, {"aws:CurrentTime": _iso(T0)})
    assert given.result.allowed and given.changes_at == math.inf
    derived = store.authorize(USER, "kinesisvideo:PutMedia", STREAM)
    assert derived.result.allowed and derived.changes_at == T0 + 5
    # A gateway mapping's trusted time is the clock's: it does not fix the answer.
    trusted = store.authorize(USER, "kinesisvideo:PutMedia", STREAM, trusted_context={"aws:CurrentTime": _iso(T0)})
    assert trusted.changes_at == T0 + 5


_OPS = ["DateLessThan", "DateLessThanEquals", "DateGreaterThan", "DateGreaterThanEquals", "DateEquals",
        "DateNotEquals", "NumericLessThan", "NumericGreaterThanEquals", "NumericEquals", "NumericNotEquals"]


@st.composite
def _statement(draw: st.DrawFn) -> dict[str, Any]:
    conditions: dict[str, dict[str, Any]] = {}
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(_OPS))
        offset = draw(st.sampled_from([-2, 0, 1, 3, 3.5, 7, 12, 12.25]))
        if op.startswith("Numeric"):
            key, value = "aws:EpochTime", str(T0 + offset)
        elif draw(st.booleans()):
            key, value = "aws:CurrentTime", _iso(T0 + offset) if offset == int(offset) else str(T0 + offset)
        else:
            key, value = "aws:EpochTime", str(int(T0 + offset))
        conditions.setdefault(op + ("IfExists" if draw(st.booleans()) else ""), {})[key] = value
    s: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Deny"])),
                         "Action": draw(st.sampled_from(["kinesisvideo:PutMedia", "kinesisvideo:*", "*"])),
                         "Resource": "*"}
    if conditions:
        s["Condition"] = conditions
    return s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(statements=st.lists(_statement(), min_size=1, max_size=4),
       start=st.sampled_from([-4.0, -0.5, 0.0, 2.75, 3.0, 6.5, 11.0]))
def test_the_decision_holds_until_changes_at(store: Store, statements: list[dict[str, Any]], start: float) -> None:
    """Soundness: at every instant from t up to changes_at(t), the decision is the one given at t."""
    _put(store, statements)
    t = T0 + start
    first = _at(store, t)
    horizon = min(first.changes_at, T0 + 20)
    s = t
    while s < horizon:
        assert _at(store, s).result.decision == first.result.decision, (statements, t, s, first.changes_at)
        s += 0.5


def test_a_session_changes_at_its_end(store: Store) -> None:
    _put(store, [{"Effect": "Allow", "Action": "*", "Resource": "*"}])
    store.clock = lambda: T0
    store.create_principal("role", ACCOUNT, "r", trust_policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": USER},
                                                "Action": "sts:AssumeRole"}]}))
    store.apply({"op": "PutInlinePolicy", "account": ACCOUNT, "kind": "role", "name": "r", "policy_name": "p",
                 "document": json.dumps({"Version": "2012-10-17", "Statement": [
                     {"Effect": "Allow", "Action": "*", "Resource": "*"}]})})
    grant = store.assume_role(USER, f"arn:aws:iam::{ACCOUNT}:role/r", "sess", duration_seconds=900)
    a = store.authorize(grant.assumed_role_arn, "kinesisvideo:PutMedia", STREAM, access_key_id=grant.access_key_id)
    assert a.result.allowed
    assert a.expires == a.changes_at == T0 + 900


def test_valid_for_header_value() -> None:
    assert valid_for(math.inf, T0) is None
    assert valid_for(T0 + 10, T0 + 0.25) == "9"      # rounded down: never past the change
    assert valid_for(T0 + 10, T0 + 10.5) == "0"
