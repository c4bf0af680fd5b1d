"""Named constants of the gRPC server: channel options, thread and process counts, Simulate limits, timings."""

from __future__ import annotations

from typing import Any

from ..api import MAX_MESSAGE_BYTES
from ..policy import limits

MIB = 1024 * 1024

# Threads of the grpc.server ThreadPoolExecutor, per process. Decisions are CPU-bound Python: every
# extra thread only competes for the GIL with the others and with gRPC's own polling thread. Measured
# with `make bench` (closed loop, 64 in flight, 2 cores): 8 threads 2,300-2,600 calls/s, 4 threads
# ~3,400, 2 threads ~3,850. Two, so that one slow call (a large Simulate) does not stall the rest;
# scale out with --workers (processes), not threads.
DEFAULT_THREADS = 2

# Calls gRPC core holds until a server thread takes them. Above gRPC's default soft limit of 1,000 it
# cancels the oldest (the client sees CANCELLED): at 2,000 calls/s a pause of half a second (a reload, a
# garbage collection, a burst from a client that fell behind) already failed calls. Each waiting call
# costs a few KB; how long it may wait is the caller's deadline (Envoy's is 1 s).
MAX_PENDING_CALLS = 10_000

SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", 3 * MAX_PENDING_CALLS),
    # Off for one process: a second server on a taken port must fail, not silently share it.
    # app.py turns it on when --workers N > 1 processes share the port on purpose.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 60_000),                 # ping idle clients every minute ...
    ("grpc.keepalive_timeout_ms", 20_000),              # ... and drop them when the ping is not answered
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),   # tolerate client keepalives down to 10 s
    ("grpc.http2.max_ping_strikes", 2),
]

# Authorize on raw bytes (authz.server.answers). The answer memo holds up to --cache-size encoded answers
# (0 disables it with the decision cache). Distinct request contexts are few (a gateway sends the same
# source address and transport flags again and again), so their memo is small.
CONTEXT_MEMO_SIZE = 4_096
# ... and both are bounded in bytes (authz.server.answers charges each entry what it keeps alive): at most
# MEMO_MAX_BYTES together (--memo-bytes), of which the context memo may use 1/MEMO_CONTEXT_SHARE. A request
# (a context, for the context memo) larger than MEMO_MAX_REQUEST_BYTES is answered but never memoised: the
# repeated requests of a gateway are well under 1 KiB, and large distinct ones would only push them out.
MEMO_MAX_BYTES = 64 * MIB
MEMO_CONTEXT_SHARE = 4
MEMO_MAX_REQUEST_BYTES = 16 * 1024
# Charges for the objects around an entry's bytes, measured with tracemalloc and rounded up (the memory
# tests check that no entry shape holds more than it is charged): per entry (its tuples, dict slots and
# answer), per context key (a bytes or str object and its slots), per context value (a str and its slot).
MEMO_ENTRY_OVERHEAD_BYTES = 1_024
MEMO_CONTEXT_KEY_OVERHEAD_BYTES = 128
MEMO_CONTEXT_VALUE_OVERHEAD_BYTES = 80

# The cyclic garbage collector's thresholds in a server process (gc.set_threshold). Python's default
# (700, 10, 10) collects the young generation every 700 net allocations; with caches filling on
# uncached traffic that also promotes and rescans their entries over and over. Measured in process on
# uncached Authorize requests: about 27 us per call with the default, 19 us with these (as with the
# collector off). Decisions make no reference cycles; the loaded state is frozen (store/memory.py).
GC_THRESHOLDS = (50_000, 20, 20)

# Simulate: documents arrive inline, so their number and size are bounded here (the IAM API bounds a policy
# text parameter at MAX_POLICY_TEXT_CHARS; Organizations trees are at most root + 5 OU levels + the account).
MAX_SIMULATE_DOCUMENTS = 64                              # every document of one SimulateRequest together
MAX_SIMULATE_DOCUMENT_CHARS = limits.MAX_POLICY_TEXT_CHARS
MAX_SCP_LEVELS = 7
MAX_RCP_LEVELS = MAX_SCP_LEVELS

# Simulate runs in its own processes (authz.server.simulate), so that a large one never holds the
# decision threads' GIL: SIMULATE_PROCESSES by default (--simulate-processes; 0 runs it on the server's
# threads, as before), and at most that many Simulates at once; another one meanwhile is refused
# (RESOURCE_EXHAUSTED, retry later) rather than queued behind them, so that it never holds a server thread either.
SIMULATE_PROCESSES = 1

# AssumeRole on the decision port (--assume-role-auth): "none" believes the request's `caller` (a gateway
# that calls on its clients' behalf); "sigv4" requires the STS AssumeRole HTTP request signed by the
# caller's key and takes every parameter from its signed body (authz.server.sts).
ASSUME_ROLE_AUTH_MODES = ("none", "sigv4")
# The signed STS request's size: its body holds at most a 2,048-character session policy and 50 tags of
# 128 + 256 characters, form-encoded (up to 3 bytes per character); headers as an SDK sends them.
MAX_STS_BODY_BYTES = 128 * 1024
MAX_STS_PARAMETERS = 128               # Action, Version, 5 parameters and 2 per tag, with room to spare
MAX_STS_HEADERS = 64
MAX_STS_HEADER_CHARS = 8 * 1024        # one header, name and value

# Watch (authz.server.watch): streams are served by a grpc.aio server on its own event-loop thread and port
# (--watch-listen; by default the decision listener's host and port + 1). Each open watch costs a stream
# (about 22 KB measured in docs/performance.md) plus its request and last answer; MAX_WATCHES (--max-watches)
# bounds them per process: one more is refused RESOURCE_EXHAUSTED. A watch's messages wait in a queue of at
# most WATCH_QUEUE_MAX while the client is slow to read; a client that stops reading fills it and is dropped
# (RESOURCE_EXHAUSTED), so that its memory stays bounded. Messages are sent only when a decision changes, so
# a client that reads at all never comes near the bound.
MAX_WATCHES = 10_000
WATCH_QUEUE_MAX = 32
# A change that affects many watches re-decides them in slices of this many, yielding to the event loop
# between slices (the other watches' writes, new watches and timers go on meanwhile).
WATCH_REDECIDE_SLICE = 256
# AuthorizeStream (authz.server.stream), on the same streaming listener: at most MAX_AUTHORIZE_STREAMS open streams
# per process (--max-authorize-streams; one more is refused RESOURCE_EXHAUSTED), and per stream at most
# AUTHORIZE_STREAM_MAX_IN_FLIGHT responses decided but not yet sent: past it the server stops reading that stream
# until it has sent some (a client that does not read is not read either). A stream costs what a Watch stream does
# (about 22 KB) plus at most that many encoded responses (about 100 bytes each without explain).
MAX_AUTHORIZE_STREAMS = 1_000
AUTHORIZE_STREAM_MAX_IN_FLIGHT = 1_024
# ... and at most this many bytes of them (answers with `explain` run to kilobytes): the reader stops as for the
# count. Checked between stream messages, so a stream may hold one message's answers more (at most
# AUTHORIZE_STREAM_MAX_PER_MESSAGE of them). With the stream cap: about 1 GB in all in the worst case.
AUTHORIZE_STREAM_MAX_QUEUED_BYTES = 1024 * 1024
WATCH_ADDRESS_HEADER = "authz-watch-address"   # trailing metadata of the decision listener's redirect
WATCH_OFF = "off"                              # --watch-listen off: no streaming listener

DRAIN_GRACE_SECONDS = 10.0             # SIGTERM: in-flight calls get this long to finish
WORKER_SYNC_INTERVAL = 0.2             # --workers: how often each process looks for other processes' changes
DEFAULT_LISTEN = "127.0.0.1:50051"
REQUEST_ID_HEADER = "x-request-id"     # metadata key read when AuthorizeRequest.request_id is empty

# Health service names: "" is the whole server (what probes ask by default).
AUTHORIZER_SERVICE = "authz.v1.Authorizer"
ADMIN_SERVICE = "authz.v1.PolicyAdmin"
