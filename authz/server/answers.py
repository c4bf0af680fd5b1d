"""Authorize on raw bytes: an answer memo for repeated requests, wire views and prepared contexts for the rest.

A gateway asks the same few questions over and over (the same camera pushing to the same stream,
the same player reading it), so the decision RPCs work on the bytes gRPC receives:

- Answer memo: the request's bytes -> the encoded response, valid for the store revision it was
  decided against and while the store's clock is within the answer's validity (the current second
  for a decision that read the clock's aws:CurrentTime, until the end of a role session). A hit parses,
  evaluates and encodes nothing; its response says `cached`. Requests that differ only in their
  bytes (another request_id, another key order) miss here and meet the store's decision cache.
- Otherwise the request is parsed with its wire view (authz.v1.AuthorizeRequestView, protobuf's C
  parser), which yields principal, action and resource as strings and every context map entry as
  the bytes the client sent.
- Context memo: the tuple of context entry bytes -> the store's PreparedContext (limits checked,
  keys normalised, derived keys dropped). A miss decodes the context (which also checks that every
  entry is valid UTF-8; see decode_context) and prepares it once.

The target is checked once (by the store) and an answer encoded once: the memo's copy, with `cached`
set, is the same bytes plus that field.

Identical bytes always parse to the identical request, so neither memo can change an answer. An
answer memoised at an earlier revision is served at a later one only while no change since touched
what its decision read (Store.still_valid, the decision cache's own test), re-encoded with the current
revision; a change that may touch anything (a bundle load) empties both memos. Requests with `explain`
are never memoised.

Memory. Both memos are bounded in bytes as well as entries (--memo-bytes, settings.MEMO_MAX_BYTES, shared
between them), and a request larger than settings.MEMO_MAX_REQUEST_BYTES (a context larger than that, for
the context memo) is answered without being memoised: a flood of large distinct requests cannot hold
more than the budget, and the small repeated requests the memos exist for still fit. Each entry is
charged what it keeps alive (the request's bytes, the encoded answer, the parsed view when kept, the
prepared context) plus a fixed overhead measured for the objects around them (tests/test_memo_memory.py).
"""

from __future__ import annotations

import threading
from typing import Generic, Hashable, Mapping, NamedTuple, TypeVar

from ..evaluate import Result
from ..requests import check_target
from ..store import Answer, PreparedContext, Store
from ..store.cache import Deps
from ..store.changes import Change
from ..v1 import authz_pb2 as pb
from ..v1 import wire_pb2
from . import convert, settings
from .errors import Undecodable

ContextKey = tuple[bytes, ...]

# Once a memo has filled up (distinct requests outnumber it), it keeps only what was asked for before: the
# hashes of at most this many keys seen once are remembered (a set of ints, reset when full), and a key is
# kept on its second sighting. Measured: a put costs a request that never repeats about a third of its
# server path (17-22 us instead of 11-12 in process), and a memo full of one-off requests empties itself.
MEMO_DOORKEEPER_KEYS = 65_536

# AuthorizeResponse.cached = true as encoded: field 5, varint, 1. `cached` is the response's last field and
# protobuf writes fields in number order, so an encoded uncached response followed by these bytes is
# exactly the encoding of the same response with `cached` set (tests/test_answers.py checks it).
CACHED_FIELD = bytes(((pb.AuthorizeResponse.CACHED_FIELD_NUMBER << 3) | 0, 1))


class EncodedAnswer(NamedTuple):
    """The store's answer to one request, encoded as its AuthorizeResponse, with what the observers need."""

    data: bytes                                  # the encoded AuthorizeResponse
    raw: bytes                                   # the request
    result: Result
    revision: int
    cached: bool
    parsed: wire_pb2.AuthorizeRequestView | None   # the request's view, when it was parsed
    # The store's Answer (deps, changes_at, expires) when the store decided it now; None from the answer memo
    # (whose entries keep only what serving them again needs). Watch re-decides with no memo and reads it.
    decided: Answer | None = None

    @property
    def view(self) -> wire_pb2.AuthorizeRequestView:
        """The request's fields (parsed now for an answer from the memo: only the decision log asks)."""
        return self.parsed if self.parsed is not None else parse_view(self.raw)


class _Memo(NamedTuple):
    revision: int
    valid_from: float      # the store's clock must be in [valid_from, valid_until): see store.Answer
    valid_until: float
    answer: EncodedAnswer  # its response encoded with `cached` set
    deps: Deps | None      # what the decision read (store.Answer.deps): valid at a later revision while untouched


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteBoundedMemo(Generic[K, V]):
    """At most `entries` entries charged at most `max_bytes` together; full means start over.

    Reads take no lock (one dict lookup is atomic in CPython). Writes take one, so that the byte count
    is exactly the sum of the charges of the entries present and the bound holds with any number of
    threads. Clearing when full, as the store's BoundedMemo does, costs nothing per hit.
    """

    __slots__ = ("_data", "_charges", "_entries", "_max_bytes", "_bytes", "_lock", "_overflowed", "_seen")

    def __init__(self, entries: int, max_bytes: int) -> None:
        self._data: dict[K, V] = {}
        self._charges: dict[K, int] = {}    # written under the lock only; never read on a hit
        self._entries = entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self._overflowed = False            # it has started over for being full: admit only repeated keys
        self._seen: set[int] = set()        # hashes of keys seen once since then (the doorkeeper)

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    def admit(self, key: K) -> bool:
        """Whether a value for `key` is worth a put: always until the memo first fills up; after that only
        for a key seen before (MEMO_DOORKEEPER_KEYS), so that one-off keys cost no put and no longer empty
        what repeats. Only what is kept changes, never an answer."""
        if not self._overflowed:
            return True
        h = hash(key)
        seen = self._seen
        if h in seen:
            return True
        if len(seen) >= MEMO_DOORKEEPER_KEYS:
            self._seen = seen = set()
        seen.add(h)
        return False

    def put(self, key: K, value: V, charge: int) -> None:
        """Keep `value` (charged `charge` bytes) unless the charge alone exceeds the budget; a value
        already kept under `key` (one that no longer holds) is replaced."""
        if charge > self._max_bytes or self._entries <= 0:
            return
        with self._lock:
            self._bytes -= self._charges.pop(key, 0)
            if len(self._data) >= self._entries or self._bytes + charge > self._max_bytes:
                self._data = {}
                self._charges = {}
                self._bytes = 0
                self._overflowed = True
            self._data[key] = value
            self._charges[key] = charge
            self._bytes += charge

    @property
    def nbytes(self) -> int:
        """Bytes charged for the entries present (never more than the budget)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)


def answer_charge(raw: bytes, data: bytes, view: wire_pb2.AuthorizeRequestView | None) -> int:
    """Bytes an answer memo entry keeps alive: the request (the key), the encoded answer, the parsed view
    when it is kept (copies of the request's strings and of each context entry), and the objects around them."""
    charge = len(raw) + len(data) + settings.MEMO_ENTRY_OVERHEAD_BYTES
    if view is not None:
        charge += len(raw) + settings.MEMO_CONTEXT_KEY_OVERHEAD_BYTES * len(view.context)
    return charge


def _strings(value: object) -> int:
    """Strings in a prepared context value (a str, or tuples of them: multivalued keys, Variants)."""
    return sum(map(_strings, value)) if isinstance(value, tuple) else 1


def context_charge(key: ContextKey, prepared: PreparedContext) -> int:
    """Bytes a context memo entry keeps alive: the entries' bytes (the key), the prepared context made from
    them (every key and value decoded to a str, no larger than its UTF-8), and the objects around them."""
    values = prepared.values
    return (2 * sum(map(len, key)) + settings.MEMO_ENTRY_OVERHEAD_BYTES
            + settings.MEMO_CONTEXT_KEY_OVERHEAD_BYTES * (len(key) + len(values))
            + settings.MEMO_CONTEXT_VALUE_OVERHEAD_BYTES * sum(map(_strings, values.values())))


def parse_view(raw: bytes) -> wire_pb2.AuthorizeRequestView:
    try:
        return wire_pb2.AuthorizeRequestView.FromString(raw)
    except Exception as exc:   # noqa: BLE001 - protobuf's DecodeError and anything a parser may raise
        raise Undecodable("authz.v1.AuthorizeRequest", type(exc).__name__) from None


def decode_context(raw: bytes) -> Mapping[str, pb.ContextValues]:
    """The context map of an encoded request (checking that every entry is valid UTF-8).

    The view already holds each entry's bytes, but protobuf decodes a map only as part of its
    message: parsing the whole request again (about 0.6 µs for the bench's eleven entries) costs
    half as much as re-encoding the entries alone to decode only them (1.25 µs), so a context memo
    miss pays that, and nothing else parses the request twice."""
    try:
        return pb.AuthorizeRequest.FromString(raw).context
    except Exception as exc:   # noqa: BLE001 - protobuf's DecodeError and anything a parser may raise
        raise Undecodable("authz.v1.AuthorizeRequest", type(exc).__name__) from None


def parse_batch(raw: bytes) -> list[bytes]:
    """The encoded requests of an AuthorizeBatchRequest, in order."""
    try:
        return list(wire_pb2.AuthorizeBatchRequestView.FromString(raw).requests)
    except Exception as exc:   # noqa: BLE001
        raise Undecodable("authz.v1.AuthorizeBatchRequest", type(exc).__name__) from None


def encode_batch(responses: list[bytes]) -> bytes:
    """An encoded AuthorizeBatchResponse holding the encoded responses, in order."""
    return wire_pb2.AuthorizeBatchResponseView(responses=responses).SerializeToString()


class Answers:
    """Decides requests given as bytes, through the store, with the two memos of the module docstring."""

    def __init__(self, store: Store, answer_memo_size: int | None = None,
                 context_memo_size: int = settings.CONTEXT_MEMO_SIZE, *, keep_views: bool = False,
                 memo_bytes: int = settings.MEMO_MAX_BYTES) -> None:
        if answer_memo_size is None:
            answer_memo_size = store.config.cache_size     # --cache-size sizes both caches; 0 disables both
        self.store = store
        self.keep_views = keep_views   # memoised answers keep their parsed request (for a decision log or metrics)
        self._answer_size = answer_memo_size
        self._context_size = context_memo_size
        # --memo-bytes is shared: the context memo gets its fixed fraction, the answer memo the rest.
        self._context_bytes = memo_bytes // settings.MEMO_CONTEXT_SHARE
        self._answer_bytes = memo_bytes - self._context_bytes
        self._answers: ByteBoundedMemo[bytes, _Memo] = ByteBoundedMemo(answer_memo_size, self._answer_bytes)
        self._contexts: ByteBoundedMemo[ContextKey, PreparedContext] = ByteBoundedMemo(context_memo_size,
                                                                                       self._context_bytes)
        store.on_change(self._changed)

    def _changed(self, _snapshot: object, change: Change) -> None:
        if change.touched.everything:
            self.clear()

    def clear(self) -> None:
        """Forget both memos. Called on every new revision: no entry can be used again, and the memory
        goes now rather than when the memo fills."""
        self._answers = ByteBoundedMemo(self._answer_size, self._answer_bytes)
        self._contexts = ByteBoundedMemo(self._context_size, self._context_bytes)

    def decide(self, raw: bytes, now: float | None = None, hits: list[int] | None = None) -> EncodedAnswer:
        """Answer one encoded AuthorizeRequest with an encoded AuthorizeResponse.

        `now` is the store's clock when a caller answering many requests as of one instant has read it
        once (AuthorizeBatch); a memoised answer is served only if it holds at that instant. With `hits`,
        a memo hit is added to hits[0] for the caller to count once (Store cache's note_hit takes a lock).
        Raises Undecodable for bytes that are not a request, and the store's RequestError/LimitError
        for a request it cannot evaluate.
        """
        store = self.store
        memo = self._answers.get(raw)
        if memo is not None and memo.valid_from <= (store.clock() if now is None else now) < memo.valid_until:
            revision = store.revision
            if memo.revision == revision:
                if hits is None:
                    store.cache.note_hit()
                else:
                    hits[0] += 1
                return memo.answer
            if store.still_valid(memo.deps, memo.revision):
                a = memo.answer
                again = a._replace(revision=revision, data=convert.result_to_proto(
                    a.result, revision, True, False).SerializeToString())
                self._answers.put(raw, memo._replace(revision=revision, answer=again),
                                  answer_charge(raw, again.data, a.parsed))
                store.cache.note_hit()
                return again
        view = parse_view(raw)
        if view.explain:
            return self._explained(raw, view)
        principal, action, resource, ctx_key = view.principal, view.action, view.resource, tuple(view.context)
        small = len(raw) <= settings.MEMO_MAX_REQUEST_BYTES
        memo_context = small or sum(map(len, ctx_key)) <= settings.MEMO_MAX_REQUEST_BYTES
        prepared = self._contexts.get(ctx_key) if memo_context else None
        if prepared is None:
            prepared = self._prepare(raw, principal, action, resource)
            if memo_context and self._contexts.admit(ctx_key):
                self._contexts.put(ctx_key, prepared, context_charge(ctx_key, prepared))
        answer = store.authorize(principal, action, resource, prepared=prepared, access_key_id=view.access_key_id)
        data = convert.result_to_proto(answer.result, answer.revision, answer.cached, False).SerializeToString()
        encoded = EncodedAnswer(data, raw, answer.result, answer.revision, answer.cached, view, answer)
        if small and self._answer_size > 0 and answer.valid_until > store.clock() and self._answers.admit(raw):
            memo_data = data if answer.cached else data + CACHED_FIELD
            self._answers.put(raw, _Memo(answer.revision, answer.valid_from, answer.valid_until,
                                         encoded._replace(data=memo_data, cached=True, decided=None,
                                                          parsed=view if self.keep_views else None), answer.deps),
                              answer_charge(raw, memo_data, view if self.keep_views else None))
        return encoded

    def _prepare(self, raw: bytes, principal: str, action: str, resource: str) -> PreparedContext:
        """The request's context, decoded and prepared by the store.

        The store checks the target (principal, action, resource) when it decides, and that check
        comes first: when the context is refused, a fault in the target is the error reported."""
        try:
            return self.store.prepare_context(convert.context_from_proto(decode_context(raw)))
        except Exception:
            check_target(principal, action, resource)
            raise

    def _explained(self, raw: bytes, view: wire_pb2.AuthorizeRequestView) -> EncodedAnswer:
        context = convert.context_from_proto(decode_context(raw))
        answer = self.store.authorize(view.principal, view.action, view.resource, context, explain=True,
                                      access_key_id=view.access_key_id)
        response = convert.result_to_proto(answer.result, answer.revision, answer.cached, True)
        return EncodedAnswer(response.SerializeToString(), raw, answer.result, answer.revision, answer.cached,
                             view, answer)

    def stats(self) -> dict[str, int]:
        return {"answers": len(self._answers), "contexts": len(self._contexts),
                "answer_capacity": self._answer_size, "context_capacity": self._context_size,
                "answer_bytes": self._answers.nbytes, "context_bytes": self._contexts.nbytes,
                "answer_bytes_capacity": self._answer_bytes, "context_bytes_capacity": self._context_bytes}
