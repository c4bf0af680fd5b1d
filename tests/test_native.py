"""The mypyc build of the decision path (authz/native.py): `make test` runs it, it answers exactly as the sources
do, and a build older than the sources, or AUTHZ_PURE_PYTHON=1, runs the sources instead."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from authz import native
from tests.conformance import load_cases
from tests.server_fixture import ServerProcess, copy_example_bundle, server_factory  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
# `make test` sets this: there the compiled build must exist and be the one running (a failed compile fails CI
# rather than quietly testing the slower build only).
EXPECT_ENV = "AUTHZ_EXPECT_NATIVE"
COMPILED = native.build_state()[0]
needs_build = pytest.mark.skipif(not COMPILED, reason=f"no fresh compiled build here ({native.mode()}): "
                                                      "`make native` builds it")

PROBE = """
import json, sys
import authz, authz.native
import importlib
files = {m: importlib.import_module(m).__file__ for m in authz.native.MODULES}
print(json.dumps({"mode": authz.native.mode(), "compiled": authz.native.compiled(), "files": files}))
"""


def probe(cwd: Path, **env: str) -> dict:
    full = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=full, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


def test_make_test_runs_the_compiled_build() -> None:
    if os.environ.get(EXPECT_ENV) != "1":
        pytest.skip(f"{EXPECT_ENV} is not set (it is under `make test`)")
    assert COMPILED, native.mode()
    assert native.mode() == "compiled (mypyc)"
    assert native.compiled()
    seen = probe(ROOT)
    assert seen["compiled"] and all(not f.endswith(".py") for f in seen["files"].values()), seen


@needs_build
def test_pure_python_env_runs_every_listed_module_from_its_source() -> None:
    seen = probe(ROOT, **{native.PURE_ENV: "1"})
    assert not seen["compiled"]
    assert seen["mode"] == f"pure Python ({native.PURE_ENV} is set)"
    assert all(f.endswith(".py") for f in seen["files"].values()), seen


@needs_build
def test_a_build_older_than_any_source_is_not_used(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "authz", tmp_path / "authz", ignore=shutil.ignore_patterns("__pycache__"))
    assert probe(tmp_path)["compiled"], "the copied build, as fresh as the sources, should run"
    # An edit to a module that is not compiled makes the whole build stale too: compiled code reads its types.
    later = time.time() + 5
    os.utime(tmp_path / "authz" / "cli.py", (later, later))
    seen = probe(tmp_path)
    assert not seen["compiled"]
    assert "older than the sources" in seen["mode"]
    assert all(f.endswith(".py") for f in seen["files"].values()), seen


def test_without_a_build_the_sources_run(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "authz", tmp_path / "authz",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    seen = probe(tmp_path)
    assert seen == {**seen, "compiled": False, "mode": "pure Python"}


def simulate(pure: bool, cases: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", "import sys; from authz.cli import main; sys.exit(main())",
                          "simulate", "--explain"], cwd=ROOT, env=env, input=cases,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


# The request fields of a decision case; the rest are its policies (and its expectation, not read here).
REQUEST_FIELDS = ("principal", "action", "resource", "resourceAccount", "context")


def crossed(cases: list[dict], per_case: int = 4) -> list[dict]:
    """Each case's policies asked other cases' requests (a fixed spread, no randomness): requests the policies
    were not written for, so that conditions, variables and wildcards meet values of every kind."""
    n = len(cases)
    out = []
    for i, case in enumerate(cases):
        for k in range(1, per_case + 1):
            other = cases[(i + 37 * k) % n]
            mixed = {key: value for key, value in case.items() if key not in REQUEST_FIELDS}
            mixed.update({key: other[key] for key in REQUEST_FIELDS if key in other})
            mixed["id"] = f"{case['id']}x{other['id']}"
            out.append(mixed)
    return out


@needs_build
def test_compiled_and_pure_engines_give_identical_answers_on_every_decision_case() -> None:
    """Every conformance decision case, and each case's policies asked other cases' requests, with explanations
    (matched statements, notes, missing keys), through the compiled build and through the sources: the same
    output, line for line."""
    cases = load_cases("decisions")
    cases = [*cases, *crossed(cases)]
    text = "".join(json.dumps(c) + "\n" for c in cases)
    compiled, pure = simulate(False, text), simulate(True, text)
    assert len(compiled.splitlines()) == len(cases)
    for a, b, case in zip(compiled.splitlines(), pure.splitlines(), cases):
        assert a == b, case["id"]


@needs_build
def test_the_server_says_which_build_runs_in_its_log_and_status(
        tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    for env, expected in (({}, "compiled (mypyc)"), ({native.PURE_ENV: "1"}, f"pure Python ({native.PURE_ENV} is set)")):
        server = server_factory(bundle, tmp_path / f"state{len(env)}", env=env)
        assert server.listening[0]["engine"] == expected
        with server.admin() as admin:
            assert admin.status().engine == expected
