"""Garbage-collection pauses (authz.server.gcpause): timed per generation, exposed as metrics and logged at stop;
and freezing the heap out of the collector's way (as every load does) never changes an answer."""

from __future__ import annotations

import gc
import json
import logging
import weakref
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import generate_latest

from authz.api import context_to_proto
from authz.server import app
from authz.server.answers import Answers
from authz.server.config import Config
from authz.server.gcpause import GC_PAUSE_BUCKETS, GcPauses
from authz.server.metrics import Metrics
from authz.store import Store
from authz.v1 import authz_pb2 as pb
from tests import example_ids as ids
from tests.server_fixture import copy_example_bundle, example_store

VIEWER = ids.user("viewer")
ACTIONS = ("kinesisvideo:GetMedia", "kinesisvideo:PutMedia", "kinesisvideo:DescribeStream")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with example_store(tmp_path_factory.mktemp("gc")) as s:
        yield s


@pytest.fixture
def thawed() -> Iterator[None]:
    """Whatever a test froze is handed back to the collector afterwards."""
    try:
        yield
    finally:
        gc.unfreeze()


def test_every_collection_is_counted_and_timed_per_generation() -> None:
    pauses = GcPauses().install()
    try:
        assert pauses.install() is pauses and gc.callbacks.count(pauses) == 1
        gc.collect(0)
        gc.collect()
        assert pauses.counts[0] >= 1 and pauses.counts[2] >= 1
        for g in (0, 2):
            assert pauses.largest[g] > 0 and pauses.seconds[g] >= pauses.largest[g]
            assert sum(pauses.buckets[g]) == pauses.counts[g]
            assert len(pauses.buckets[g]) == len(GC_PAUSE_BUCKETS) + 1
        summary = pauses.summary()
        assert summary["largest_ms_any"] == max(summary["largest_ms"]) > 0
        assert summary["collections"] == pauses.counts
    finally:
        pauses.uninstall()
    counted = list(pauses.counts)
    gc.collect()
    assert pauses.counts == counted and pauses not in gc.callbacks     # uninstalled: no longer called
    pauses.reset()
    assert pauses.counts == [0, 0, 0] and pauses.largest == [0.0, 0.0, 0.0] and pauses.summary()["largest_ms_any"] == 0


def test_pauses_are_metrics(store: Store) -> None:
    pauses = GcPauses().install()
    try:
        gc.collect()
        text = generate_latest(Metrics(store.status, gc_pauses=pauses).registry).decode()
    finally:
        pauses.uninstall()
    assert f'authz_gc_pause_seconds_count{{generation="2"}} {float(pauses.counts[2])}' in text
    assert f'authz_gc_pause_seconds_bucket{{generation="2",le="+Inf"}} {float(pauses.counts[2])}' in text
    assert 'authz_gc_pause_max_seconds{generation="2"}' in text
    assert "authz_gc_pause_seconds" not in generate_latest(Metrics(store.status).registry).decode()


def test_a_frozen_object_is_still_freed_when_nothing_refers_to_it(thawed: None) -> None:
    class Entry:
        pass

    kept = Entry()
    held = weakref.ref(kept)
    gc.freeze()
    del kept
    assert held() is None                                   # reference counting frees it, frozen or not


def test_freezing_changes_no_answer(store: Store, thawed: None) -> None:
    requests = [pb.AuthorizeRequest(principal=VIEWER, action=a, resource=ids.YOUR_STREAM, request_id=f"r{i}",
                                    context=context_to_proto({"aws:SourceIp": f"10.0.0.{i}"})).SerializeToString()
                for i in range(12) for a in ACTIONS]
    answers, plain = Answers(store), Answers(store, answer_memo_size=0)
    before = [answers.decide(r).data for r in requests]
    for _ in range(3):
        gc.collect()
        gc.freeze()                                                  # memo, caches and state out of its way
        after = [answers.decide(r).data for r in requests]          # from the memo, frozen
        fresh = [plain.decide(r).data for r in requests]
        assert [_uncached(a) for a in after] == [_uncached(b) for b in before] == [_uncached(f) for f in fresh]
    assert store.reload()[0]                                         # a load unfreezes and starts over
    assert [_uncached(plain.decide(r).data) for r in requests] == [_uncached(b) for b in before]


def _uncached(data: bytes) -> Any:
    r = pb.AuthorizeResponse.FromString(data)
    r.cached = False
    return r


def test_the_server_times_its_pauses_while_serving_and_logs_them_at_stop(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    sidecar = app.start(Config(bundle=copy_example_bundle(tmp_path / "bundle"), listen="127.0.0.1:0",
                               watch_interval=0))
    try:
        assert sidecar.gc_pauses is not None and sidecar.gc_pauses in gc.callbacks
        gc.collect()
        assert sidecar.gc_pauses.counts[2] >= 1
    finally:
        with caplog.at_level(logging.INFO, logger="authz.server"):
            sidecar.stop(0)
    assert sidecar.gc_pauses not in gc.callbacks
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("garbage collection while"))
    logged = json.loads(line.split(": ", 1)[1])
    assert logged["collections"][2] >= 1 and logged["largest_ms_any"] > 0
