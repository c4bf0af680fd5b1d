"""Server logs: --log-format text|json on a live server, request ids on the lines of a call, bad settings refused."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from authz.server.ext_authz import ExtAuthzServicer
from authz.server.logs import JsonFormatter, bind_request_id, current_request_id, handler, request_scope
from authz.store import Store, StoreConfig
from tests.example_ids import CAMERA, REGION, Key, user
from tests.server_fixture import copy_example_bundle, start_server
from tests.test_ext_authz_unit import BUNDLE, OPTIONS, T0, ask, put_media
from tests.test_metrics_log import check
from tests.test_startup_errors import run_server

JSON_FIELDS = {"time", "level", "logger", "message"}
GATEWAY_LOGGER = "authz.gateway.ext_authz"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_log_lines_of_a_check_carry_its_request_id(log_format: str, tmp_path: Path) -> None:
    s = start_server(copy_example_bundle(tmp_path / "bundle"), None, "--log-level", "DEBUG", "--region", REGION,
                     "--watch-interval", "0", admin=None, token=None, env={"AUTHZ_LOG_FORMAT": log_format})
    now = datetime.now(timezone.utc)
    wrong_key = Key(CAMERA.access_key_id, "not/the/secret/key/of/the/camera/user00")
    allowed = put_media(CAMERA, name="your_stream", at=now).but(extra={"x-request-id": "log-allow-1"})
    refused = put_media(wrong_key, name="your_stream", at=now).but(extra={"x-request-id": "log-refused-2"})
    try:
        assert check(s.addr, allowed).allowed
        assert not check(s.addr, refused).allowed
    finally:
        s.stop()
    lines = [line for line in s.log if line.strip()]
    signatures = [w.headers["Authorization"].rsplit("Signature=", 1)[1] for w in (allowed, refused)]
    for secret in (CAMERA.secret, wrong_key.secret, *signatures):
        assert secret not in "".join(lines)

    if log_format == "text":
        assert any("ext_authz allow" in line and line.rstrip().endswith("[request_id=log-allow-1]") for line in lines)
        assert any("ext_authz deny" in line and "[request_id=log-refused-2]" in line for line in lines)
        assert not any(line.startswith("{") for line in lines)
        return
    records = [json.loads(line) for line in lines]           # every line of the process is one JSON object
    for record in records:
        assert JSON_FIELDS <= set(record), record
        datetime.fromisoformat(record["time"])
    by_id = {r["request_id"]: r for r in records if r["logger"] == GATEWAY_LOGGER and "request_id" in r}
    assert by_id["log-allow-1"]["message"].startswith(f"ext_authz allow {user('camera')} kinesisvideo:PutMedia")
    assert by_id["log-allow-1"]["level"] == "DEBUG"
    assert by_id["log-refused-2"]["message"].startswith("ext_authz deny 403 InvalidSignatureException")
    listening = [r for r in records if r["message"].startswith("listening ")]
    assert len(listening) == 1 and "request_id" not in listening[0]     # lines outside a call carry none


@pytest.mark.parametrize("args,env", [
    (["--log-format", "yaml"], {}),
    ([], {"AUTHZ_LOG_FORMAT": "yaml"}),
])
def test_an_unknown_log_format_is_refused_at_parsing(args: list[str], env: dict[str, str]) -> None:
    done = run_server("--listen", "127.0.0.1:0", *args, env=env)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "--log-format" in last and "'yaml'" in last and "json" in last and "text" in last
    assert ("AUTHZ_LOG_FORMAT" in last) == bool(env)


def test_an_invalid_log_level_names_its_variable() -> None:
    done = run_server("--listen", "127.0.0.1:0", env={"AUTHZ_LOG_LEVEL": "verbose"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "AUTHZ_LOG_LEVEL" in done.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# In process: the formatter and the request scope


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """The gateway's logger, writing JSON lines to a buffer (and nowhere else) for the test."""
    out = io.StringIO()
    logger = logging.getLogger(GATEWAY_LOGGER)
    saved = (logger.propagate, logger.level)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    h = handler("json", out)
    logger.addHandler(h)
    yield logger, out
    logger.removeHandler(h)
    logger.propagate, logger.level = saved


def test_json_lines_carry_the_bound_request_id_and_exceptions(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    with request_scope():
        bind_request_id("req-in-scope")
        logger.info("deciding %s", "something")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    logger.warning("after")
    first, failed, after = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["message"], first["request_id"], first["level"], first["logger"]) == (
        "deciding something", "req-in-scope", "INFO", GATEWAY_LOGGER)
    assert failed["request_id"] == "req-in-scope" and "ValueError: boom" in failed["exception"]
    assert "request_id" not in after and current_request_id() == ""


def test_a_check_binds_its_request_id_and_leaves_none_behind(captured: tuple[logging.Logger, io.StringIO]) -> None:
    _, out = captured
    store = Store(StoreConfig(bundle_dir=BUNDLE, watch_interval=0), clock=lambda: T0.timestamp())
    store.open()
    try:
        servicer = ExtAuthzServicer(store, OPTIONS)
        assert ask(servicer, put_media(CAMERA, name="your_stream").but(extra={"x-request-id": "in-process-1"})).allowed
        assert current_request_id() == ""                    # server threads are reused for other calls
        assert ask(servicer, put_media(CAMERA, name="your_stream").but(extra={"x-request-id": "bad id!"})).allowed
    finally:
        store.close()
    allow, unnamed = (json.loads(line) for line in out.getvalue().splitlines())
    assert allow["message"].startswith("ext_authz allow") and allow["request_id"] == "in-process-1"
    assert "request_id" not in unnamed        # an id that is not a request id (a space, '!') is not repeated


@pytest.mark.sources
def test_the_incident_line_of_a_failed_authorize_carries_the_callers_request_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that fails unexpectedly logs one incident line; it names the caller's x-request-id (and a call
    without one leaves no id behind on the reused server thread)."""
    import grpc

    from authz.server import app
    from authz.server.config import Config
    from authz.store import decisions as decisions_module
    from authz.v1 import authz_pb2 as pb
    from authz.v1 import authz_pb2_grpc as pb_grpc

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("injected failure")

    out = io.StringIO()
    errors_log = logging.getLogger("authz.server")
    h = handler("json", out)
    errors_log.addHandler(h)
    sidecar = app.start(Config(bundle=copy_example_bundle(tmp_path / "bundle"), listen="127.0.0.1:0",
                               watch_interval=0))
    monkeypatch.setattr(decisions_module, "decide", boom)
    request = pb.AuthorizeRequest(principal=user("camera"), action="kinesisvideo:PutMedia", resource="*")
    try:
        with grpc.insecure_channel(sidecar.addresses["decision"]) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            for metadata in ([("x-request-id", "req-incident-7")], []):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Authorize(request, timeout=5, metadata=metadata)
                assert err.value.code() == grpc.StatusCode.INTERNAL
    finally:
        errors_log.removeHandler(h)
        sidecar.stop(0)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    incidents = [line for line in lines if line["message"].startswith("unexpected error")]
    assert len(incidents) == 2
    assert incidents[0]["request_id"] == "req-incident-7"
    assert "request_id" not in incidents[1]
