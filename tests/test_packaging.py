"""The package as a user installs it: a wheel built from the tracked files, in a fresh virtual environment.

Builds the sdist and from it the wheel (`python -m build`: the generated gRPC code must come from
the build step, since a clean checkout has none), installs the wheel with the runtime dependencies
only into a new venv, and drives it from outside the source tree: `authz --version`,
`authz validate`, `authz serve` on the example bundle, and a client call made by the installed
package against that server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

import authz
from tests.server_fixture import EXAMPLE_BUNDLE, ROOT, start_server

pytestmark = pytest.mark.integration

WRITER = "arn:aws:iam::123456789012:user/stream-writer"


def _run(*cmd: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def _tracked_copy(dest: Path) -> Path:
    """The files git tracks (what a clean clone has), without generated code or the venv."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin/ directory of a fresh venv with the built wheel installed."""
    base = tmp_path_factory.mktemp("package")
    src = _tracked_copy(base / "src")
    if not (src / "pyproject.toml").exists():
        pytest.skip("not a git checkout: nothing tracked to build from")
    assert not list((src / "authz" / "v1").glob("*_pb2*.py")), "generated code must not be tracked"
    _run(sys.executable, "-m", "build", "--outdir", base / "dist", src, cwd=base)
    wheel = next((base / "dist").glob("*.whl"))
    sdist = next((base / "dist").glob("*.tar.gz"))
    with tarfile.open(sdist) as tar:
        assert any(n.endswith("protos/authz/v1/authz.proto") for n in tar.getnames())
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {"authz/v1/authz_pb2.py", "authz/v1/authz_pb2_grpc.py", "authz/v1/wire_pb2.py", "authz/py.typed"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=base)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "-c", ROOT / "constraints.txt", wheel, cwd=base)
    yield venv / "bin"


def test_version(installed: Path, tmp_path: Path) -> None:
    out = _run(installed / "authz", "--version", cwd=tmp_path).stdout
    assert out.split() == ["authz", authz.__version__]


def test_the_installed_package_is_not_the_source_tree(installed: Path, tmp_path: Path) -> None:
    out = _run(installed / "python", "-c", "import authz, authz.v1.authz_pb2 as pb; print(authz.__file__)",
               cwd=tmp_path).stdout
    assert "site-packages" in out and str(ROOT) not in out


def test_only_runtime_dependencies_are_installed(installed: Path, tmp_path: Path) -> None:
    out = _run(installed / "python", "-m", "pip", "list", "--format", "json", cwd=tmp_path).stdout
    names = {p["name"].lower() for p in json.loads(out)}
    assert {"grpcio", "protobuf", "cachetools", "kvs-authz"} <= names
    assert not names & {"matplotlib", "pytest", "hypothesis", "atheris", "grpcio-tools", "uvloop"}


def test_validate(installed: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*"}]}))
    _run(installed / "authz", "validate", good, cwd=tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "Maybe", "Action": "x:y", "Resource": "*"}]}')
    done = subprocess.run([str(installed / "authz"), "validate", str(bad)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "Effect" in done.stdout + done.stderr


def test_a_client_call_against_a_server_started_from_the_package(installed: Path, tmp_path: Path) -> None:
    server = start_server(EXAMPLE_BUNDLE, None, program=[str(installed / "authz"), "serve"], admin=None, token=None,
                          cwd=tmp_path)
    try:
        script = (
            "import sys\n"
            "from authz.client import AuthzClient\n"
            "with AuthzClient(sys.argv[1]) as c:\n"
            "    allow = c.authorize(sys.argv[2], 'kinesisvideo:PutMedia', sys.argv[3])\n"
            "    deny = c.authorize(sys.argv[2], 'kinesisvideo:DeleteStream', sys.argv[3])\n"
            "    print(allow.decision, deny.decision)\n")
        stream = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"
        out = _run(installed / "python", "-c", script, server.addr, WRITER, stream, cwd=tmp_path).stdout
        assert out.split() == ["1", "3"], out    # DECISION_ALLOW, DECISION_IMPLICIT_DENY
    finally:
        server.stop()
