"""Simulate away from the decision threads: the call's work (check, evaluate, encode) and the worker processes that do it.

A Simulate carries its policies inline, up to MAX_SIMULATE_DOCUMENTS documents of up to
MAX_SIMULATE_DOCUMENT_CHARS each: one of about 3 MB held the interpreter for seconds, and every
decision on the port waited for it. Here each call is decided in a worker process (`python -m
authz.server.simulate`, started on first use, reused after), so the server's threads only wait on a
pipe, holding no GIL. At most --simulate-processes Simulates run at once; one more is refused at once
with RESOURCE_EXHAUSTED instead of waiting, because a waiting call would hold one of the few server
threads that decisions need. The server parses nothing of the request: its bytes go to the worker as
they came. A worker that runs past the call's deadline (at most SIMULATE_MAX_SECONDS) is killed, and
one whose server goes away reads end-of-file and exits.

This module imports no gRPC: the workers load only the policy engine and the messages.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from ..api import MAX_MESSAGE_BYTES
from ..evaluate import EngineOptions, evaluate
from ..policy.errors import LimitError, PolicyError, Problem, RequestError
from ..requests import check_request
from ..v1 import authz_pb2 as pb
from . import convert, settings

FieldError = RequestError | LimitError

SIMULATE_MAX_SECONDS = 60.0     # a Simulate without a deadline gets this long before its worker is killed
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES + 64 * 1024    # a request or an answer between server and worker
_LENGTH = struct.Struct(">I")
_OK, _ERROR = 0, 1
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])   # the directory that holds the authz package


def renamed(exc: FieldError, field: str) -> FieldError:
    """The same error about another field name (e.g. `principal` -> `requests[3].principal`)."""
    message = str(exc).removeprefix(f"{exc.field}: ")
    return type(exc)(field, message)


def check_simulate(req: pb.SimulateRequest) -> None:
    """Limits of one Simulate call, named after the fields that break them."""
    r = req.request
    try:
        check_request(r.principal, r.action, r.resource, convert.context_from_proto(r.context))
    except (RequestError, LimitError) as exc:
        raise renamed(exc, f"request.{exc.field}") from None
    for name, levels, cap in (("scp_levels", req.scp_levels, settings.MAX_SCP_LEVELS),
                              ("rcp_levels", req.rcp_levels, settings.MAX_RCP_LEVELS)):
        if len(levels) > cap:
            raise LimitError(name, f"{len(levels)} levels; at most {cap} (root, OUs, account)")
    n = convert.simulate_document_count(req)
    if n > settings.MAX_SIMULATE_DOCUMENTS:
        raise LimitError("identity_policies", f"{n} policy documents in one call; at most "
                                              f"{settings.MAX_SIMULATE_DOCUMENTS} (MAX_SIMULATE_DOCUMENTS)")


def answer(raw: bytes, options: EngineOptions) -> tuple[int, bytes]:
    """One encoded SimulateRequest -> (_OK, encoded SimulateResponse) or (_ERROR, the error as JSON)."""
    try:
        request = pb.SimulateRequest.FromString(raw)
    except Exception as exc:   # noqa: BLE001 - protobuf's DecodeError and anything a parser may raise
        return _ERROR, _error("undecodable", reason=type(exc).__name__)
    try:
        check_simulate(request)
        req, policies, explain = convert.simulate_input(request)
        result = evaluate(req, policies, explain=explain, options=options)
        # Revision 0: the answer comes from the documents in the request, not from the store.
        return _OK, pb.SimulateResponse(result=convert.result_to_proto(result, 0, False, explain)).SerializeToString()
    except (RequestError, LimitError) as exc:
        kind = "request" if isinstance(exc, RequestError) else "limit"
        return _ERROR, _error(kind, field=exc.field, message=str(exc).removeprefix(f"{exc.field}: "))
    except PolicyError as exc:
        return _ERROR, _error("policy", name=exc.name, problems=[p.as_dict() for p in exc.problems])
    except Exception as exc:   # noqa: BLE001 - a bug: the server answers INTERNAL
        return _ERROR, _error("internal", reason=type(exc).__name__)


def _error(kind: str, **fields: Any) -> bytes:
    return json.dumps({"kind": kind, **fields}).encode()


def answer_or_raise(status: int, payload: bytes) -> bytes:
    """The encoded SimulateResponse, or the error `answer` reported, raised again in this process."""
    if status == _OK:
        return payload
    e = json.loads(payload)
    kind = e["kind"]
    if kind == "request":
        raise RequestError(e["field"], e["message"])
    if kind == "limit":
        raise LimitError(e["field"], e["message"])
    if kind == "policy":
        raise PolicyError([Problem(p["path"], p["message"]) for p in e["problems"]], e["name"])
    if kind == "undecodable":
        from .errors import Undecodable   # the server side only: that module loads gRPC
        raise Undecodable("authz.v1.SimulateRequest", e["reason"])
    raise RuntimeError(f"Simulate failed in its worker process: {e.get('reason', kind)}")


# ------------------------------------------------------------------ the pipe between server and worker


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def _read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame, or None at end of file."""
    head = _read_exactly(stream, _LENGTH.size)
    if head is None:
        return None
    (n,) = _LENGTH.unpack(head)
    if n > MAX_FRAME_BYTES:
        raise ValueError(f"a frame of {n} bytes; at most {MAX_FRAME_BYTES}")
    return _read_exactly(stream, n)


class WorkerGone(Exception):
    """The worker process ended, or was killed at the deadline, before it answered."""


class _Worker:
    """One `python -m authz.server.simulate` process, asked one request at a time."""

    def __init__(self, options: EngineOptions) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "authz.server.simulate"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        # The options' fields, not the object: the compiled build's frozen dataclasses do not unpickle.
        _write_frame(self._in, pickle.dumps({f.name: getattr(options, f.name) for f in dataclasses.fields(options)}))

    def ask(self, raw: bytes, timeout: float) -> tuple[int, bytes]:
        try:
            _write_frame(self._in, raw)
            ready, _, _ = select.select([self._out], [], [], max(0.0, timeout))
            if not ready:
                self.kill()
                raise WorkerGone(f"it ran longer than {timeout:.0f} s")
            head = _read_exactly(self._out, 1)
            body = _read_frame(self._out) if head is not None else None
        except (OSError, ValueError) as exc:
            self.kill()
            raise WorkerGone(type(exc).__name__) from None
        if head is None or body is None:
            self.kill()
            raise WorkerGone(f"it exited with {self.proc.poll()}")
        return head[0], body

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._in.close()
        self._out.close()

    def close(self) -> None:
        """End of file on its input: it exits when the request it may be deciding is done."""
        try:
            self._in.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
        self._out.close()


class Simulator:
    """Runs Simulate calls: in `processes` worker processes, at most that many at once (0: on the calling thread)."""

    def __init__(self, processes: int, options: EngineOptions) -> None:
        self.processes = processes
        self.options = options
        self._slots: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()   # None: not started yet
        for _ in range(processes):
            self._slots.put(None)
        self._started: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, raw: bytes, time_remaining: float | None = None) -> bytes:
        """The encoded SimulateResponse for an encoded SimulateRequest, or the call's error.

        Raises LimitError (RESOURCE_EXHAUSTED) when every worker is busy, or when the worker ended
        before it answered (killed at the deadline, out of memory).
        """
        if self.processes == 0:
            return answer_or_raise(*answer(raw, self.options))
        try:
            worker = self._slots.get_nowait()
        except queue.Empty:
            raise LimitError("simulate", f"{self.processes} Simulate calls are running, as many as "
                                         f"--simulate-processes {self.processes} allows at once; retry later, "
                                         "or start the server with more") from None
        try:
            if worker is None or not worker.alive():
                worker = self._start()
            timeout = min(SIMULATE_MAX_SECONDS, time_remaining if time_remaining is not None else SIMULATE_MAX_SECONDS)
            try:
                status, payload = worker.ask(raw, timeout)
            except WorkerGone as gone:
                worker = None
                raise LimitError("simulate", f"the Simulate worker process ended before it answered ({gone}); "
                                             "use fewer or smaller documents, or a longer deadline") from None
        finally:
            self._slots.put(worker)
        return answer_or_raise(status, payload)

    def _start(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is stopping")
            worker = _Worker(self.options)
            self._started = [w for w in self._started if w.alive()] + [worker]
            return worker

    def workers(self) -> list[int]:
        """Process ids of the running workers."""
        with self._lock:
            return [w.proc.pid for w in self._started if w.alive()]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            started, self._started = self._started, []
        for w in started:
            w.close()


def _worker_main() -> int:
    """`python -m authz.server.simulate`: answer framed requests on stdin until end of file."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())        # nothing else may write into the answers
    source = sys.stdin.buffer
    first = _read_frame(source)
    if first is None:
        return 0
    options = EngineOptions(**pickle.loads(first))   # from the server that started it, through its private pipe
    while True:
        raw = _read_frame(source)
        if raw is None:
            return 0                 # the server closed the pipe or is gone
        status, payload = answer(raw, options)
        try:
            out.write(bytes((status,)))
            _write_frame(out, payload)
        except BrokenPipeError:
            return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
