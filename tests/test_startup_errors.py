"""Start-up errors of the real server process: each exits non-zero with one line that says what to fix."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from authz.server.config import build_parser, env_name, parse_config
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import server_factory  # noqa: F401 - a fixture, requested by name
from tests.server_fixture import EXAMPLE_BUNDLE, ROOT, START_TIMEOUT

VIEWER = "arn:aws:iam::123456789012:user/viewer"          # of the example bundle
YOUR_STREAM = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"


def run_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python server.py ARGS` to its exit (every case here fails before serving); stderr captured."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "server.py"), *args], cwd=ROOT, env=full_env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a listening socket of this test holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.mark.parametrize("flag,extra,env", [
    ("--listen", [], {}),
    ("--admin-listen", [], {"AUTHZ_ADMIN_TOKEN": "a-token"}),
    ("--metrics-listen", [], {}),
    ("--listen", ["--workers", "2"], {}),                     # the supervisor reserves the port itself
    ("--watch-listen", [], {}),
    ("--watch-listen", ["--workers", "2"], {}),               # ... and the streaming listener's port
])
def test_a_busy_port_names_its_flag(flag: str, extra: list[str], env: dict[str, str], busy_port: int,
                                    tmp_path: Path) -> None:
    address = f"127.0.0.1:{busy_port}"
    args = ["--bundle", str(EXAMPLE_BUNDLE), "--listen", "127.0.0.1:0", flag, address, *extra,
            "--state-dir", str(tmp_path / "state")]
    done = run_server(*args, env=env)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line or line.startswith("E")]
    assert len(errors) == 1, done.stderr                      # one line, not gRPC's as well
    env_var = "AUTHZ_" + flag[2:].replace("-", "_").upper()
    assert address in errors[0] and "already in use" in errors[0] and flag in errors[0] and env_var in errors[0]
    assert "Traceback" not in done.stderr


def test_an_invalid_log_level_in_the_environment_is_refused_before_start() -> None:
    done = run_server("--listen", "127.0.0.1:0", env={"AUTHZ_LOG_LEVEL": "verbose"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "--log-level" in last and "AUTHZ_LOG_LEVEL" in last and "'verbose'" in last
    assert all(level in last for level in ("DEBUG", "INFO", "WARNING", "ERROR"))


CHOICE_FLAGS = [a for a in build_parser()._actions if a.choices is not None]


@pytest.mark.parametrize("action", CHOICE_FLAGS, ids=lambda a: a.option_strings[-1])
@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12))
def test_every_flag_with_choices_refuses_any_other_environment_value(
        action: argparse.Action, value: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert action.choices is not None
    flag = action.option_strings[-1]
    converted = action.type(value) if callable(action.type) else value
    assume(converted not in action.choices)
    monkeypatch.setenv(env_name(flag), value)
    with pytest.raises(SystemExit) as info:
        parse_config([])
    assert info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in message and env_name(flag) in message
    assert all(str(choice) in message for choice in action.choices)


def test_a_bundle_directory_that_does_not_exist_stops_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    for args, env in ((["--bundle", str(missing)], {}), ([], {"AUTHZ_BUNDLE": str(missing)})):
        done = run_server("--listen", "127.0.0.1:0", *args, env=env)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert str(missing) in last and "--bundle" in last and "AUTHZ_BUNDLE" in last
        assert "listening" not in done.stderr                      # refused before any port was opened
    (tmp_path / "a-file").write_text("")
    assert run_server("--listen", "127.0.0.1:0", "--bundle", str(tmp_path / "a-file")).returncode == 2


def test_no_bundle_and_no_state_warns_that_everything_is_denied(server_factory: Any, tmp_path: Path) -> None:
    empty = server_factory(None, None, admin=None, token=None)
    with empty.client() as c:
        assert c.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM).decision == pb.DECISION_IMPLICIT_DENY
    warnings = [line for line in empty.log if " WARNING " in line]
    assert len(warnings) == 1 and "denied" in warnings[0] and "--bundle" in warnings[0], empty.log
    served = server_factory(EXAMPLE_BUNDLE, None, admin=None, token=None)       # a bundle: nothing to warn about
    with served.client() as c:
        assert c.authorize(VIEWER, "kinesisvideo:GetMedia", YOUR_STREAM).decision == pb.DECISION_ALLOW
    assert not [line for line in served.log if " WARNING " in line], served.log
