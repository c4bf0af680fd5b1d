"""`authz check --bundle DIR`: the offline answer is the sidecar's answer, with the same JSON and exit status."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz import cli
from tests.server_fixture import EXAMPLE_BUNDLE, ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[1]
SEED = yaml.safe_load((ROOT / "examples" / "tests" / "seed.yaml").read_text())["tests"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    s = start_server(EXAMPLE_BUNDLE)
    yield s
    s.kill()


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv, stdin=io.StringIO(""), stdout=out)
    return code, out.getvalue(), err.getvalue()


def ask(where: list[str], principal: str, action: str, resource: str, context: list[str],
        explain: bool) -> tuple[int, dict[str, object] | None, str]:
    argv = ["check", *where, "--principal", principal, "--action", action, "--resource", resource]
    for c in context:
        argv += ["--context", c]
    if explain:
        argv.append("--explain")
    code, out, err = run(argv)
    body = json.loads(out) if out else None
    if body is not None:
        body.pop("cached", None)      # the sidecar's answer memo; the decision is the same
    return code, body, err


@pytest.mark.parametrize("explain", [False, True])
def test_offline_answers_match_the_sidecar_for_the_example_tests(server: ServerProcess, explain: bool) -> None:
    for t in SEED:
        offline = ask(["--bundle", str(EXAMPLE_BUNDLE)], t["principal"], t["action"], t["resource"], [], explain)
        online = ask(["--addr", server.addr], t["principal"], t["action"], t["resource"], [], explain)
        assert offline[:2] == online[:2], t["name"]
        assert offline[0] == (0 if t["expect"] == "Allow" else 1), t["name"]
        assert offline[1] is not None and offline[1]["decision"] == "DECISION_" + {
            "Allow": "ALLOW", "ImplicitDeny": "IMPLICIT_DENY", "ExplicitDeny": "EXPLICIT_DENY"}[t["expect"]]


PRINCIPALS = sorted({t["principal"] for t in SEED} | {"anonymous", "arn:aws:iam::123456789012:user/nobody"})
ACTIONS = sorted({t["action"] for t in SEED} | {"kinesisvideo:GetDataEndpoint", "s3:GetObject"})
RESOURCES = sorted({t["resource"] for t in SEED})
CONTEXT = st.lists(st.sampled_from(["aws:SecureTransport=true", "aws:SecureTransport=false",
                                    "aws:SourceIp=10.0.0.1", "aws:RequestTag/team=video", "aws:TagKeys=team",
                                    "kinesisvideo:x=", "bad-pair"]), max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(principal=st.sampled_from(PRINCIPALS), action=st.sampled_from(ACTIONS), resource=st.sampled_from(RESOURCES),
       context=CONTEXT, explain=st.booleans())
def test_property_offline_and_online_agree(server: ServerProcess, principal: str, action: str, resource: str,
                                           context: list[str], explain: bool) -> None:
    """Any request, context included: the same exit status and the same JSON offline as from the sidecar."""
    offline = ask(["--bundle", str(EXAMPLE_BUNDLE)], principal, action, resource, context, explain)
    online = ask(["--addr", server.addr], principal, action, resource, context, explain)
    assert offline[:2] == online[:2]


def test_bundle_errors_exit_2_and_say_what_to_fix(tmp_path: Path) -> None:
    base = ["--principal", SEED[0]["principal"], "--action", SEED[0]["action"], "--resource", SEED[0]["resource"]]
    code, out, err = run(["check", "--bundle", str(tmp_path / "absent"), *base])
    assert code == 2 and out == "" and "absent" in err and "not a directory" in err
    (tmp_path / "bad.yaml").write_text("account: '123456789012'\nbogus: 1\n")
    code, out, err = run(["check", "--bundle", str(tmp_path), *base])
    assert code == 2 and out == "" and "bad.yaml" in err and "bogus" in err
    code, out, err = run(["check", "--bundle", str(EXAMPLE_BUNDLE), "--addr", "127.0.0.1:1", *base])
    assert code == 2 and out == "" and "--addr" in err
    code, out, err = run(["check", "--bundle", str(EXAMPLE_BUNDLE), "--principal", "arn:aws:iam::1:user/x",
                          "--action", "nocolon", "--resource", "*"])
    assert code == 2 and out == "" and "action" in err
