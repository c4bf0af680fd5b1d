"""Named constants of the gRPC server: channel options, thread and process counts, Simulate limits, timings."""

from __future__ import annotations

from typing import Any

from ..policy import limits

MIB = 1024 * 1024
MAX_MESSAGE_BYTES = 4 * MIB            # one message either way; a full batch of 1,000 requests fits easily

# Threads of the grpc.server ThreadPoolExecutor, per process. Decisions are CPU-bound Python: every
# extra thread only competes for the GIL with the others and with gRPC's own polling thread. Measured
# with `make bench` (closed loop, 64 in flight, 2 cores): 8 threads 2,300-2,600 calls/s, 4 threads
# ~3,400, 2 threads ~3,850. Two, so that one slow call (a large Simulate) does not stall the rest;
# scale out with --workers (processes), not threads.
DEFAULT_WORKERS = 2

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

# The cyclic garbage collector's thresholds in a server process (gc.set_threshold). Python's default
# (700, 10, 10) collects the young generation every 700 net allocations; with caches filling on
# uncached traffic that also promotes and rescans their entries over and over. Measured in process on
# uncached Authorize requests: about 27 us per call with the default, 19 us with these (as with the
# collector off). Decisions make no reference cycles; the loaded state is frozen (store._release_memory).
GC_THRESHOLDS = (50_000, 20, 20)

# Simulate: documents arrive inline, so their number and size are bounded here (the IAM API bounds a policy
# text parameter at MAX_POLICY_TEXT_CHARS; Organizations trees are at most root + 5 OU levels + the account).
MAX_SIMULATE_DOCUMENTS = 64                              # every document of one SimulateRequest together
MAX_SIMULATE_DOCUMENT_CHARS = limits.MAX_POLICY_TEXT_CHARS
MAX_SCP_LEVELS = 7
MAX_RCP_LEVELS = MAX_SCP_LEVELS

DRAIN_GRACE_SECONDS = 10.0             # SIGTERM: in-flight calls get this long to finish
WORKER_SYNC_INTERVAL = 0.2             # --workers: how often each process looks for other processes' changes
DEFAULT_LISTEN = "127.0.0.1:50051"
ADMIN_TOKEN_HEADER = "authorization"   # metadata key; value "Bearer <token>"
REQUEST_ID_HEADER = "x-request-id"     # metadata key read when AuthorizeRequest.request_id is empty

# Health service names: "" is the whole server (what probes ask by default).
AUTHORIZER_SERVICE = "authz.v1.Authorizer"
ADMIN_SERVICE = "authz.v1.PolicyAdmin"
