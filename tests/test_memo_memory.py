"""The decision port's memos are bounded in bytes: many large distinct requests cannot grow the server's memory.

Measured three ways on a real store: the memos' own accounting (never above the budget), the memory
their entries really hold (tracemalloc: never above what they are charged, for every request shape the
property test draws), and the process's RSS growth (psutil, with a generous bound). No timing anywhere.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.api import context_to_proto
from authz.server import settings as server_settings
from authz.server import answers as answers_module
from authz.server.answers import Answers
from authz.store import Store
from authz.v1 import authz_pb2 as pb
from tests import example_ids as ids
from tests.server_fixture import example_store

MIB = 1 << 20
VIEWER, GET = ids.user("viewer"), "kinesisvideo:GetMedia"
LARGE_REQUESTS = 60                  # the finding: 60 unique 1 MiB requests grew the server by 246 MiB
RSS_GROWTH_BOUND = 48 * MIB          # generous: the memos' budget in this test is far below it


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with example_store(tmp_path_factory.mktemp("memo")) as s:
        yield s


def request(context: Mapping[str, str | Sequence[str]], request_id: str = "") -> bytes:
    return pb.AuthorizeRequest(principal=VIEWER, action=GET, resource=ids.YOUR_STREAM, request_id=request_id,
                               context=context_to_proto(context)).SerializeToString()


def mib_request(i: int) -> bytes:
    """About 1 MiB, unique by `i`: two keys of 128 values of 4,096 characters (within every request limit)."""
    value = f"{i:08d}" + "x" * 4088
    return request({f"custom:k{k}": [value] * 128 for k in range(2)})


def charged(answers: Answers) -> int:
    s = answers.stats()
    return s["answer_bytes"] + s["context_bytes"]


@pytest.mark.parametrize("keep_views", [False, True], ids=["plain", "with-views"])
def test_large_distinct_requests_do_not_grow_memory(store: Store, keep_views: bool) -> None:
    answers = Answers(store, keep_views=keep_views)
    assert len(mib_request(0)) > MIB
    gc.collect()
    rss = psutil.Process().memory_info().rss
    decisions = {answers.decide(mib_request(i)).result.decision for i in range(LARGE_REQUESTS)}
    gc.collect()
    grown = psutil.Process().memory_info().rss - rss
    assert decisions == {store.authorize(VIEWER, GET, ids.YOUR_STREAM).result.decision}   # still answered
    assert grown < RSS_GROWTH_BOUND, f"RSS grew {grown / MIB:.0f} MiB over {LARGE_REQUESTS} requests"
    stats = answers.stats()
    assert (stats["answers"], stats["contexts"], charged(answers)) == (0, 0, 0)   # too large to memoise


def test_requests_just_under_the_threshold_stay_within_the_byte_budget(store: Store) -> None:
    budget = 4 * MIB
    answers = Answers(store, keep_views=True, memo_bytes=budget)
    size = server_settings.MEMO_MAX_REQUEST_BYTES - 256
    gc.collect()
    rss = psutil.Process().memory_info().rss
    peak = 0
    for i in range(1_500):                       # ~23 MiB of distinct requests, each one memoisable
        pad = f"{i:08d}" + "y" * (size - 400)
        raw = request({"custom:pad": [pad[j:j + 4000] for j in range(0, len(pad), 4000)]})
        assert len(raw) <= server_settings.MEMO_MAX_REQUEST_BYTES
        answers.decide(raw)
        peak = max(peak, charged(answers))
        stats = answers.stats()
        assert stats["answer_bytes"] <= stats["answer_bytes_capacity"]
        assert stats["context_bytes"] <= stats["context_bytes_capacity"]
    gc.collect()
    assert 0 < peak <= budget
    assert answers.stats()["answers"] > 0                 # memoised, and forgotten as the budget required
    assert psutil.Process().memory_info().rss - rss < RSS_GROWTH_BOUND


def test_small_repeated_requests_are_still_answered_from_the_memo(store: Store) -> None:
    answers = Answers(store)
    raw = request({"aws:SourceIp": "192.0.2.10"}, "r-1")
    answers.decide(raw)
    assert answers.stats()["answers"] == 1
    again = answers.decide(raw)
    assert again.cached and pb.AuthorizeResponse.FromString(again.data).cached
    assert 0 < answers.stats()["answer_bytes"] < 4096


# ------------------------------------------------------------------ the whole class, by property


values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cf", "Zl", "Zp")), max_size=600)
contexts = st.dictionaries(st.from_regex(r"custom:k[a-z0-9]{1,12}", fullmatch=True),
                           st.one_of(values, st.lists(values, min_size=1, max_size=40)), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(shapes=st.lists(contexts, min_size=1, max_size=25), keep_views=st.booleans(),
       budget=st.sampled_from([64 * 1024, 512 * 1024, 64 * MIB]))
def test_property_memos_never_hold_more_than_charged_nor_charge_more_than_the_budget(
        store: Store, shapes: list[dict[str, str | list[str]]], keep_views: bool, budget: int) -> None:
    answers = Answers(store, keep_views=keep_views, memo_bytes=budget)
    requests = [request(ctx, f"p-{i}") for i, ctx in enumerate(shapes)]
    answers.decide(request({}, "warm-up"))      # the store's own per-principal memos, outside the measure
    answers.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for raw in requests:
            answers.decide(raw)
            stats = answers.stats()
            assert stats["answer_bytes"] <= stats["answer_bytes_capacity"]
            assert stats["context_bytes"] <= stats["context_bytes_capacity"]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert charged(answers) <= budget
    assert held <= charged(answers) + 16 * 1024, (held, answers.stats())    # 16 KiB: the dicts' own tables


@settings(max_examples=200, deadline=None)
@given(entries=st.integers(0, 20), budget=st.integers(0, 5_000),
       puts=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3_000)), max_size=60))
def test_property_byte_memo_accounting_is_exact_and_bounded(entries: int, budget: int,
                                                            puts: list[tuple[int, int]]) -> None:
    memo = answers_module.ByteBoundedMemo[int, int](entries, budget)
    seen: set[int] = set()
    for key, charge in puts:                    # each value is its own charge, so the memo shows its accounting
        memo.put(key, charge, charge)
        seen.add(key)
        present = {k: v for k in seen if (v := memo.get(k)) is not None}
        assert memo.nbytes == sum(present.values()) <= budget
        assert len(memo) == len(present) <= entries
        assert (memo.get(key) == charge) == (charge <= budget and entries > 0)   # kept whenever it fits
