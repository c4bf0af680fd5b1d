"""The soak harness (bench/soak.py): its answer checker, the memory behaviour it relies on, and the short soak
itself — 36 s at 80 % of the measured maximum (at most 600 requests/s, so at most 21,600 calls) with a reload
every 2.5 s and admin writes in between: zero failed calls, no answer from a half-built snapshot, memory
growth under 5 %. `make soak` runs the 10-minute version."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz.client import AuthzClient
from authz.server import app, settings
from authz.server.config import Config
from authz.store import Store, StoreConfig
from authz.v1 import authz_pb2 as pb
from bench import soak
from tests.server_fixture import EXAMPLE_BUNDLE

GET, PUT = soak.GET, soak.PUT
VIEWER = "arn:aws:iam::123456789012:user/viewer"
YOUR_STREAM = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"
BURST = 3_000


def answer(revision: int, decision: Any, *sids: str) -> bytes:
    return pb.AuthorizeResponse(decision=decision, revision=revision, deciding_statements=[
        pb.MatchedStatement(sid=s) for s in sids]).SerializeToString()


def test_every_version_implies_one_consistent_set_of_answers() -> None:
    for version in range(1, 10):
        doc = soak.bundle_document(version)
        statements = {s["Sid"]: s for s in doc["policies"][0]["document"]["Statement"]}
        for k in range(soak.STREAMS):
            decision, sids = soak.expected(version, PUT, k)
            (sid,) = sids
            assert soak.stream_arn(k) in statements[sid]["Resource"]         # the statement covers the stream
            assert (decision == pb.DECISION_ALLOW) == (statements[sid]["Effect"] == "Allow")
        assert soak.expected(version, GET, 0) == (pb.DECISION_ALLOW, [f"G{version}", f"R{version}"])
    assert [v for v in range(12) if soak.broken(v)] == [4, 9]
    assert not soak.bundle_text(4).endswith("}") and '"Missing"' in soak.bundle_text(9)   # unparsable; invalid


def test_checker_flags_mixed_refused_and_conflicting_answers() -> None:
    c = soak.Checker()
    c.answer(answer(7, pb.DECISION_ALLOW, "A2"), PUT, 0)                     # version 2, k=0: allowed
    c.answer(answer(7, pb.DECISION_ALLOW, "G2", "R2"), GET, 3)
    assert (c.mismatches, c.conflicts, c.ok) == (0, 0, 2)
    c.answer(answer(8, pb.DECISION_ALLOW, "G3", "R2"), GET, 1)               # identity of v3, streams of v2
    c.answer(answer(9, pb.DECISION_ALLOW, "A4"), PUT, 0)                     # a version that was refused
    c.answer(answer(10, pb.DECISION_ALLOW, "A2"), PUT, 1)                    # v2 denies stream 1
    c.answer(answer(11, pb.DECISION_ALLOW, "G2"), GET, 1)                    # a statement missing
    assert c.mismatches == 4 and len(c.examples) == 4
    c.answer(answer(7, pb.DECISION_ALLOW, "A6"), PUT, 0)                     # revision 7 was version 2
    assert c.conflicts == 1


def test_superseded_decisions_do_not_grow_the_cache() -> None:
    # What the soak's memory figure depends on: a change keeps the entries it did not touch, and an entry it
    # did touch is recomputed in place (same key), so repeated changes never grow the cache past what the
    # current requests need.
    store = Store(StoreConfig(bundle_dir=EXAMPLE_BUNDLE, watch_interval=0))
    store.open()
    try:
        viewer = VIEWER
        resources = [f"arn:aws:kinesisvideo:us-west-2:123456789012:stream/s{k}/1" for k in range(20)]
        for n in range(30):
            misses = store.cache.stats()["misses"]
            for r in resources:
                store.authorize(viewer, GET, r)
            assert store.cache.stats()["misses"] == misses + len(resources)   # each change touched the viewer
            assert store.cache.stats()["size"] == len(resources)
            store.apply({"op": "TagPrincipal", "account": "123456789012", "kind": "user", "name": "viewer",
                         "tags": {"n": str(n)}})
            assert store.cache.stats()["size"] == len(resources)
        hits = store.cache.stats()["hits"]
        store.authorize(viewer, GET, resources[0])
        store.authorize(viewer, GET, resources[0])
        assert store.cache.stats()["hits"] == hits + 1        # the cache still works within a revision
    finally:
        store.close()


def test_a_burst_of_queued_calls_is_answered_not_shed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3,000 calls arrive while every server thread is busy. gRPC's default would cancel those beyond its
    1,000 pending calls (CANCELLED, a failed call for the caller); the sidecar queues up to MAX_PENDING_CALLS."""
    assert BURST < settings.MAX_PENDING_CALLS
    sidecar = app.start(Config(bundle=EXAMPLE_BUNDLE, listen="127.0.0.1:0", watch_interval=0))
    busy, release = threading.Semaphore(0), threading.Event()
    real = sidecar.store.authorize

    def held(*args: Any, **kw: Any) -> Any:
        busy.release()
        release.wait(30)
        return real(*args, **kw)

    monkeypatch.setattr(sidecar.store, "authorize", held)
    try:
        with AuthzClient(sidecar.addresses["decision"], timeout=60) as client:
            request = pb.AuthorizeRequest(principal=VIEWER, action=GET, resource=YOUR_STREAM)
            calls = [client.stub.Authorize.future(request, timeout=60) for _ in range(BURST)]
            for _ in range(settings.DEFAULT_THREADS):           # every server thread now holds a call
                assert busy.acquire(timeout=30)
            release.set()
            codes = Counter(c.code() for c in calls)
        assert codes == {grpc.StatusCode.OK: BURST}
        assert {c.result().decision for c in calls} == {pb.DECISION_ALLOW}
    finally:
        release.set()
        sidecar.stop(0)


@pytest.mark.integration
def test_short_soak(tmp_path: Path) -> None:
    plan = replace(soak.SoakPlan.quick_plan(0.6), out=tmp_path / "soak.json")
    result = soak.run(plan, progress=lambda _message: None)
    load = result["load"]
    assert result["checks"] == {"zero_failed_calls": True, "memory_growth_under_limit": True,
                                "no_answer_from_a_half_built_snapshot": True, "reloads_as_expected": True}, \
        "\n".join(soak.summary(result)) + f"\n{load['examples']}"
    assert load["sent"] == int(result["target_rate_rps"] * plan.duration_s) == load["ok"]
    assert len(load["versions_answered"]) >= 6 and load["revisions_answered"] >= 20   # answers spanned the reloads
    assert result["reloads"]["refused_as_expected"] >= 2 and result["admin"]["writes"] >= 70
    assert result["memory"]["growth"] < 0.05
    json.dumps(result)                                        # what main() writes is plain JSON
