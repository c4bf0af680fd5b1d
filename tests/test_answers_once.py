"""The Authorize path checks a target once and encodes an answer once (authz.server.answers).

Each test would break if the duplicate came back: the memo's copy of an answer is the canonical encoding
of the same response with `cached` set (it is made by appending that field, not by encoding again); the
target is checked once per request, yet a faulty target is still the error reported when the context is
refused too.
"""

from __future__ import annotations

from typing import Iterator

import pytest

import authz.server.answers as answers_module
import authz.store.decisions as decisions_module
from authz.policy.errors import LimitError, RequestError
from authz.requests import MAX_CONTEXT_VALUE_CHARS
from authz.server.answers import CACHED_FIELD, Answers, decode_context
from authz.server.errors import Undecodable
from authz.store import Store, StoreConfig
from authz.v1 import authz_pb2 as pb
from authz.v1 import wire_pb2
from tests import example_ids as ids
from tests.server_fixture import copy_example_bundle

CAMERA, VIEWER = ids.user("camera"), ids.user("viewer")
PUT, GET = "kinesisvideo:PutMedia", "kinesisvideo:GetMedia"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("once")
    s = Store(StoreConfig(bundle_dir=copy_example_bundle(root / "bundle"), state_dir=root / "state",
                          watch_interval=0))
    s.open()
    yield s
    s.close()


def encode(principal: str, action: str, resource: str, context: dict[str, list[str]] | None = None,
           request_id: str = "") -> bytes:
    req = pb.AuthorizeRequest(principal=principal, action=action, resource=resource, request_id=request_id)
    for k, values in (context or {}).items():
        req.context[k].values.extend(values)
    return req.SerializeToString()


def test_cached_field_is_the_last_field_of_the_response() -> None:
    """The append trick needs `cached` to be the highest-numbered field: a new field after it breaks this."""
    numbers = [f.number for f in pb.AuthorizeResponse.DESCRIPTOR.fields]
    assert pb.AuthorizeResponse.CACHED_FIELD_NUMBER == max(numbers)
    assert CACHED_FIELD == pb.AuthorizeResponse(cached=True).SerializeToString()


@pytest.mark.parametrize("principal,action,resource", [
    (CAMERA, PUT, ids.YOUR_STREAM),          # an Allow with deciding statements
    (VIEWER, PUT, ids.YOUR_STREAM),          # an implicit deny
    (ids.user("nobody"), GET, ids.YOUR_STREAM),   # an unknown principal
])
def test_the_memo_copy_is_the_canonical_encoding_with_cached_set(store: Store, principal: str, action: str,
                                                                  resource: str) -> None:
    answers = Answers(store)
    raw = encode(principal, action, resource, {"aws:SourceIp": ["10.0.0.1"]}, request_id="memo-copy")
    first = answers.decide(raw)
    again = answers.decide(raw)
    assert not first.cached and again.cached
    expected = pb.AuthorizeResponse.FromString(first.data)
    assert not expected.cached
    expected.cached = True
    assert again.data == expected.SerializeToString()
    assert pb.AuthorizeResponse.FromString(again.data) == expected


def test_invalid_utf8_in_a_context_entry_is_undecodable() -> None:
    raw = encode(CAMERA, PUT, ids.YOUR_STREAM, {"k": ["v"]}).replace(b"\x01v", b"\x01\xff")
    view = wire_pb2.AuthorizeRequestView.FromString(raw)   # the view keeps the entry as bytes
    assert len(view.context) == 1
    with pytest.raises(Undecodable):
        decode_context(raw)
    with pytest.raises(Undecodable):
        Answers(Store(StoreConfig())).decide(raw)


class CountingCheck:
    def __init__(self, real: object) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: str) -> None:
        self.calls += 1
        self.real(*args)    # type: ignore[operator]


@pytest.mark.sources
def test_the_target_is_checked_once_per_request(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountingCheck(decisions_module.check_target)
    monkeypatch.setattr(decisions_module, "check_target", counter)
    monkeypatch.setattr(answers_module, "check_target", counter)
    answers = Answers(store, answer_memo_size=0)     # every request decided; the context memo still works
    for n, ctx in enumerate(({"aws:SourceIp": ["10.0.0.1"]}, {"aws:SourceIp": ["10.0.0.1"]}, {"k": ["v"]})):
        before = counter.calls
        answers.decide(encode(CAMERA, PUT, ids.YOUR_STREAM, ctx, request_id=str(n)))
        assert counter.calls - before == 1, f"request {n}: target checked {counter.calls - before} times"


def test_a_faulty_target_is_reported_before_a_faulty_context(store: Store) -> None:
    answers = Answers(store)
    too_long = {"aws:SourceIp": ["x" * (MAX_CONTEXT_VALUE_CHARS + 1)]}
    # context memo miss: the context is refused, and the target's fault is the one named
    with pytest.raises(RequestError) as exc:
        answers.decide(encode(CAMERA, "not an action", ids.YOUR_STREAM, too_long))
    assert exc.value.field == "action"
    with pytest.raises(LimitError) as limit:
        answers.decide(encode(CAMERA, PUT, ids.YOUR_STREAM, too_long))
    assert limit.value.field == "context[aws:SourceIp]"
    # context memo hit with a faulty target: the store's check refuses it
    answers.decide(encode(CAMERA, PUT, ids.YOUR_STREAM, {"k": ["v"]}))
    with pytest.raises(RequestError) as hit:
        answers.decide(encode(CAMERA, PUT, "not-an-arn", {"k": ["v"]}))
    assert hit.value.field == "resource"


def test_explain_reads_the_view_and_the_decoded_context(store: Store) -> None:
    answers = Answers(store)
    req = pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=ids.YOUR_STREAM, explain=True,
                              context={"aws:SourceIp": pb.ContextValues(values=["10.0.0.1"])})
    decided = answers.decide(req.SerializeToString())
    direct = store.authorize(CAMERA, PUT, ids.YOUR_STREAM, {"aws:SourceIp": "10.0.0.1"}, explain=True)
    response = pb.AuthorizeResponse.FromString(decided.data)
    assert response.explanation.decided_by == direct.result.decided_by
    assert decided.result.decision == direct.result.decision
    assert [s.sid for s in response.deciding_statements] == [m.sid for m in direct.result.deciding]
