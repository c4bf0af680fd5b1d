"""Once a memo of the decision port or the decision cache has filled up, it keeps only what was asked for before.

A flood of requests that never repeat (every camera's first connect) then costs no memo put and no longer
empties the memo of the requests that do repeat. Only what is kept changes: every answer is the one the
store gives, before and after the memo overflows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from authz.api import context_to_proto
from authz.server import answers as answers_module
from authz.server.answers import Answers, ByteBoundedMemo
from authz.store import Store, StoreConfig
from authz.v1 import authz_pb2 as pb
from tests import example_ids as ids
from tests.server_fixture import copy_example_bundle, example_store

VIEWER, GET, PUT = ids.user("viewer"), "kinesisvideo:GetMedia", "kinesisvideo:PutMedia"
MEMO_ENTRIES = 4


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with example_store(tmp_path_factory.mktemp("admission")) as s:
        yield s


def request(i: int, action: str = GET) -> bytes:
    """Distinct bytes per `i` (the request id), the same decision."""
    return pb.AuthorizeRequest(principal=VIEWER, action=action, resource=ids.YOUR_STREAM, request_id=f"r{i}",
                               context=context_to_proto({"aws:SourceIp": "10.0.0.1"})).SerializeToString()


def decision(data: bytes) -> tuple[int, tuple[str, ...]]:
    r = pb.AuthorizeResponse.FromString(data)
    return r.decision, tuple(s.sid for s in r.deciding_statements)


def test_a_memo_admits_everything_until_it_first_fills_up() -> None:
    memo: ByteBoundedMemo[bytes, int] = ByteBoundedMemo(MEMO_ENTRIES, 1 << 20)
    for i in range(MEMO_ENTRIES):
        assert memo.admit(b"k%d" % i)
        memo.put(b"k%d" % i, i, 1)
    assert len(memo) == MEMO_ENTRIES
    memo.put(b"k-next", 9, 1)                       # full: it starts over ...
    assert len(memo) == 1
    assert not memo.admit(b"one-off")               # ... and from then on admits a key on its second sighting
    assert memo.admit(b"one-off")
    assert memo.admit(b"one-off")


def test_the_doorkeeper_forgets_when_full_and_never_grows_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers_module, "MEMO_DOORKEEPER_KEYS", 3)
    memo: ByteBoundedMemo[bytes, int] = ByteBoundedMemo(1, 1 << 20)
    memo.put(b"a", 1, 1)
    memo.put(b"b", 2, 1)                            # overflowed
    seen = [memo.admit(b"x%d" % i) for i in range(3)]
    assert seen == [False, False, False]
    assert not memo.admit(b"x3")                    # the doorkeeper was full: it started over with x3 alone
    assert not memo.admit(b"x0")                    # x0 is forgotten: a first sighting again
    assert memo.admit(b"x3")


def test_after_overflow_one_off_requests_are_not_kept_and_repeats_are(store: Store) -> None:
    answers = Answers(store, answer_memo_size=MEMO_ENTRIES)
    expected = decision(answers.decide(request(0)).data)
    for i in range(MEMO_ENTRIES + 1):               # distinct requests overflow the memo
        assert decision(answers.decide(request(i)).data) == expected
    kept = answers.stats()["answers"]
    for i in range(100, 140):                       # a flood of one-off requests: answered, not kept
        got = answers.decide(request(i))
        assert decision(got.data) == expected
    assert answers.stats()["answers"] == kept
    again = request(100)                            # seen once before: kept now ...
    assert decision(answers.decide(again).data) == expected
    assert answers.stats()["answers"] == kept + 1
    hit = answers.decide(again)                     # ... and answered from the memo after that
    assert hit.cached and decision(hit.data) == expected
    assert hit.data == answers.decide(again).data


def test_answers_equal_unmemoised_answers_whatever_the_memo_keeps(store: Store) -> None:
    answers, plain = Answers(store, answer_memo_size=2), Answers(store, answer_memo_size=0)
    for round_ in range(3):
        for i in range(12):
            raw = request(i % 5 + 10 * (round_ % 2), PUT if i % 3 == 0 else GET)
            got, want = (pb.AuthorizeResponse.FromString(a.decide(raw).data) for a in (answers, plain))
            got.cached = want.cached = False
            assert got == want


def test_the_context_memo_admits_the_same_way(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = Answers(store, context_memo_size=1)
    contexts = [{"aws:SourceIp": f"10.0.0.{i}"} for i in range(4)]
    for ctx in contexts[:2]:                        # two distinct contexts overflow a memo of one
        answers.decide(pb.AuthorizeRequest(principal=VIEWER, action=GET, resource=ids.YOUR_STREAM,
                                           context=context_to_proto(ctx)).SerializeToString())
    before = answers.stats()["contexts"]
    fresh = pb.AuthorizeRequest(principal=VIEWER, action=GET, resource=ids.YOUR_STREAM,
                                context=context_to_proto(contexts[3])).SerializeToString()
    answers.decide(fresh)
    assert answers.stats()["contexts"] == before     # a context seen once is prepared, not kept
    answers.decide(pb.AuthorizeRequest(principal=VIEWER, action=PUT, resource=ids.YOUR_STREAM,
                                       context=context_to_proto(contexts[3])).SerializeToString())
    assert answers.stats()["contexts"] == 1          # seen twice: kept (the memo of one started over for it)


def test_a_full_decision_cache_keeps_a_decision_on_its_second_sighting(tmp_path: Path) -> None:
    from authz.store import decisions
    small = Store(StoreConfig(bundle_dir=copy_example_bundle(tmp_path / "bundle"), watch_interval=0, cache_size=4))
    plain = Store(StoreConfig(bundle_dir=copy_example_bundle(tmp_path / "bundle2"), watch_interval=0, cache_size=0))
    small.open()
    plain.open()
    try:
        def ask(store: Store, i: int) -> Any:
            return store.authorize(VIEWER, GET, f"{ids.YOUR_STREAM[:-1]}{i}", {"aws:SourceIp": "10.0.0.1"})

        for i in range(4):                               # room: kept at once, as always
            assert not ask(small, i).cached
            assert ask(small, i).cached
        assert small.cache.stats()["size"] == 4
        assert not ask(small, 10).cached                 # full: a first sighting is decided, not kept ...
        assert not ask(small, 10).cached                 # ... the second is kept ...
        assert ask(small, 10).cached                     # ... and answered from the cache after that
        for i in (20, 21, 20, 10, 3):
            got, want = ask(small, i), ask(plain, i)
            assert got.result == want.result             # whatever is kept, the answer is the store's
        assert decisions.CACHE_DOORKEEPER_KEYS > 0
        small.cache.clear()                              # emptied (a bundle load): everything kept again
        assert not ask(small, 30).cached and ask(small, 30).cached
    finally:
        small.close()
        plain.close()


def test_a_memoised_answer_is_served_only_within_the_instant_the_caller_gives(tmp_path: Path) -> None:
    """AuthorizeBatch reads the clock once and passes it on: a memo entry that holds for one second only (the
    decision read aws:CurrentTime from the clock) is served for that second, and decided again after it."""
    import yaml
    from datetime import datetime, timezone

    boundary = 1_900_000_000
    bundle = copy_example_bundle(tmp_path / "bundle")
    path = bundle / "123456789012.yaml"
    data = yaml.safe_load(path.read_text())
    data["users"].append({"name": "clocked", "inline": {"until-boundary": {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": PUT, "Resource": "*", "Condition": {"DateLessThan": {
            "aws:CurrentTime": datetime.fromtimestamp(boundary, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}}}]}}})
    path.write_text(yaml.safe_dump(data))
    now = [boundary - 1.5]
    store = Store(StoreConfig(bundle_dir=bundle, watch_interval=0), clock=lambda: now[0])
    store.open()
    try:
        answers = Answers(store)
        raw = pb.AuthorizeRequest(principal=ids.user("clocked"), action=PUT,
                                  resource=ids.YOUR_STREAM).SerializeToString()
        first = answers.decide(raw)
        assert decision(first.data)[0] == pb.DECISION_ALLOW and not first.cached
        hit = answers.decide(raw, boundary - 1.25)                           # the same second: the memo's copy
        assert hit.cached and hit.parsed is None                             # (a memo entry keeps no parsed view)
        past = answers.decide(raw, boundary + 0.25)                          # the instant given is past it:
        assert past.parsed is not None                                       # parsed and decided again, by the
        assert decision(past.data)[0] == pb.DECISION_ALLOW                   # store at its own clock
        now[0] = boundary + 0.25
        assert decision(answers.decide(raw, now[0]).data)[0] == pb.DECISION_IMPLICIT_DENY
    finally:
        store.close()
