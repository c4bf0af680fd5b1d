"""Simulate runs in its own worker processes: large Simulates never stop Authorize from being answered.

Progress is asserted by order of events, never by time: while large Simulates are in flight on a real
server, Authorize calls keep completing (before the Simulate does). Simulates beyond --simulate-processes
are refused at once (RESOURCE_EXHAUSTED) instead of holding a server thread; a worker that stops
answering is killed at the call's deadline and replaced; and a Simulate answered by a worker is the
answer the engine gives in process, for any request (a hypothesis property).

The measured figures are bench/simulate_starvation.py's (see the README's Limits and Performance).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.api import context_to_proto, policy_document
from authz.client import AuthzClient, CallError
from authz.evaluate import DEFAULT_OPTIONS
from authz.policy.errors import AuthzError, LimitError
from authz.v1 import authz_pb2 as pb
from tests import example_ids as ids
from tests.server_fixture import ServerProcess, copy_example_bundle, start_server

if TYPE_CHECKING:
    from authz.server.simulate import Simulator

GET = "kinesisvideo:GetMedia"
VIEWER = ids.user("viewer")
AUTHORIZE_WHILE_SIMULATING = 50      # Authorize calls that must complete while a large Simulate is in flight


def large_simulate(statements: int = 60, documents: int = 64) -> pb.SimulateRequest:
    """About 1 MB of inline policies: about a second of the engine's time."""
    def doc(i: int) -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": [
            {"Sid": f"S{i}x{j}", "Effect": "Allow", "Action": [f"kinesisvideo:Get{j}*", f"kinesisvideo:Put{i}{j}"],
             "Resource": f"arn:aws:kinesisvideo:us-west-2:{ids.ACCOUNT}:stream/s{i}-{j}-*/*",
             "Condition": {"StringLike": {"aws:UserAgent": f"cam-{j}-*"}}} for j in range(statements)]})
    return pb.SimulateRequest(request=pb.AuthorizeRequest(principal=VIEWER, action=GET, resource=ids.YOUR_STREAM),
                              identity_policies=[policy_document("", doc(i)) for i in range(documents)])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(copy_example_bundle(tmp_path_factory.mktemp("simulate") / "bundle"), None,
                     "--watch-interval", "0")
    yield s
    s.kill()


class Events:
    """Completion events of concurrent calls, in the order they happened."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self._lock = threading.Lock()

    def add(self, name: str) -> None:
        with self._lock:
            self.order.append(name)

    def between(self, first: str, last: str, name: str) -> int:
        with self._lock:
            order = list(self.order)
        return order[order.index(first) + 1:order.index(last)].count(name)


@pytest.mark.parametrize("concurrent", [1, 2, 3])
def test_authorize_is_answered_while_large_simulates_run(server: ServerProcess, concurrent: int) -> None:
    request = large_simulate()
    events = Events()
    statuses: list[grpc.StatusCode] = []
    stop = threading.Event()

    def authorize_loop() -> None:
        with server.client(timeout=60) as c:
            while not stop.is_set():
                assert c.authorize(VIEWER, GET, ids.YOUR_STREAM).decision == pb.DECISION_ALLOW
                events.add("authorize")

    def simulate(i: int) -> None:
        with server.client(timeout=60) as c:
            events.add(f"simulate-{i}-start")
            try:
                c.raw(c.stub.Simulate, request)
                statuses.append(grpc.StatusCode.OK)
                events.add("simulate-done")
            except CallError as err:
                statuses.append(err.code)
                events.add("simulate-refused")

    with server.client() as warm:        # the worker process exists before the measurement
        warm.simulate(VIEWER, GET, ids.YOUR_STREAM, identity_policies=[{"Version": "2012-10-17", "Statement": []}])
    loop = threading.Thread(target=authorize_loop)
    loop.start()
    sims = [threading.Thread(target=simulate, args=(i,)) for i in range(concurrent)]
    try:
        for t in sims:
            t.start()
        for t in sims:
            t.join(120)
    finally:
        stop.set()
        loop.join(60)
    assert grpc.StatusCode.OK in statuses
    assert set(statuses) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    last_start = max((e for e in events.order if e.endswith("-start")), key=events.order.index)
    answered = events.between(last_start, "simulate-done", "authorize")
    assert answered >= AUTHORIZE_WHILE_SIMULATING, (
        f"only {answered} Authorize calls completed while {concurrent} Simulate(s) ran")


def test_a_simulate_beyond_the_processes_is_refused_at_once(server: ServerProcess) -> None:
    events = Events()
    big: list[pb.SimulateResponse] = []

    def large() -> None:
        with server.client(timeout=60) as c:
            while True:      # a small Simulate may hold the only worker when the large one arrives: try again
                try:
                    big.append(c.raw(c.stub.Simulate, large_simulate()))
                    break
                except CallError as err:
                    if err.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
            events.add("large-done")

    t = threading.Thread(target=large)
    t.start()
    refusal: CallError | None = None
    with server.client(timeout=60) as c:
        while t.is_alive():      # small Simulates until one meets the large one in the only worker
            try:
                c.simulate(VIEWER, GET, ids.YOUR_STREAM, identity_policies=[{"Version": "2012-10-17",
                                                                            "Statement": []}])
            except CallError as err:
                refusal = err
                events.add("refused")
                break
    t.join(120)
    assert refusal is not None and refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--simulate-processes 1" in refusal.message and "retry later" in refusal.message
    assert events.order == ["refused", "large-done"]           # refused while the large one ran, not after
    assert big[0].result.decision == pb.DECISION_IMPLICIT_DENY


def test_a_worker_that_stops_answering_is_killed_at_the_deadline_and_replaced() -> None:
    from authz.server.simulate import Simulator
    simulator = Simulator(1, DEFAULT_OPTIONS)
    small = pb.SimulateRequest(request=pb.AuthorizeRequest(principal=VIEWER, action=GET,
                                                           resource=ids.YOUR_STREAM)).SerializeToString()
    try:
        first = pb.SimulateResponse.FromString(simulator.run(small))
        (pid,) = simulator.workers()
        os.kill(pid, signal.SIGSTOP)                      # alive, but it will never answer
        with pytest.raises(LimitError, match="ended before it answered"):
            simulator.run(small, time_remaining=0.2)
        assert simulator.workers() == []                  # killed, not left behind
        again = pb.SimulateResponse.FromString(simulator.run(small))   # a new worker answers
        assert again == first and simulator.workers() != [pid]
    finally:
        simulator.close()
    assert simulator.workers() == []


# ------------------------------------------------------------------ the worker answers as the engine does


@pytest.fixture(scope="module")
def simulators() -> Iterator[tuple[Simulator, Simulator]]:
    from authz.server.simulate import Simulator
    in_process, worker = Simulator(0, DEFAULT_OPTIONS), Simulator(1, DEFAULT_OPTIONS)
    yield in_process, worker
    worker.close()


def outcome(simulator: Simulator, raw: bytes) -> Any:
    try:
        return pb.SimulateResponse.FromString(simulator.run(raw))
    except AuthzError as exc:
        return type(exc).__name__, str(exc)


_STATEMENTS = st.fixed_dictionaries({
    "Effect": st.sampled_from(["Allow", "Deny", "Maybe"]),
    "Action": st.sampled_from(["*", GET, "kinesisvideo:Get*", "kinesisvideo:PutMedia", ["s3:*", GET]]),
    "Resource": st.sampled_from(["*", ids.YOUR_STREAM, "arn:aws:kinesisvideo:*:*:stream/your_*"]),
}, optional={"Condition": st.sampled_from([{"StringEquals": {"aws:UserAgent": "cam"}},
                                           {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"Nope": {}}])})
_DOCUMENTS = st.one_of(
    st.builds(lambda s: json.dumps({"Version": "2012-10-17", "Statement": s}), st.lists(_STATEMENTS, max_size=4)),
    st.sampled_from(["", "{", "[]", '{"Version": "2012-10-17", "Statement": [], "Statement": []}',
                     "[" * 40 + "]" * 40]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(documents=st.lists(_DOCUMENTS, max_size=3), boundary=st.none() | _DOCUMENTS, validate=st.booleans(),
       context=st.dictionaries(st.sampled_from(["aws:UserAgent", "aws:SourceIp", "aws:userid", "x"]),
                               st.sampled_from(["cam", "10.1.2.3", "", "a" * 5000]), max_size=3),
       explain=st.booleans(), garbage=st.none() | st.binary(max_size=64))
def test_property_a_worker_answers_every_simulate_as_the_engine_in_process(
        simulators: tuple[Simulator, Simulator], documents: list[str], boundary: str | None, validate: bool,
        context: dict[str, str], explain: bool, garbage: bytes | None) -> None:
    req = pb.SimulateRequest(request=pb.AuthorizeRequest(principal=VIEWER, action=GET, resource=ids.YOUR_STREAM,
                                                         context=context_to_proto(context), explain=explain),
                             identity_policies=[pb.PolicyDocument(document=d) for d in documents], validate=validate)
    if boundary is not None:
        req.permissions_boundary.CopyFrom(pb.PolicyDocument(document=boundary))
    raw = garbage if garbage is not None else req.SerializeToString()
    in_process, worker = simulators
    assert outcome(worker, raw) == outcome(in_process, raw)


def test_simulate_works_with_the_in_thread_setting(tmp_path: Path) -> None:
    s = start_server(copy_example_bundle(tmp_path / "bundle"), None, "--simulate-processes", "0", admin=None,
                     token=None)
    try:
        with AuthzClient(s.addr) as c:
            assert c.simulate(VIEWER, GET, ids.YOUR_STREAM, identity_policies=[{"Version": "2012-10-17",
                              "Statement": [{"Effect": "Allow", "Action": GET, "Resource": "*"}]}]).decision \
                == pb.DECISION_ALLOW
    finally:
        s.kill()
