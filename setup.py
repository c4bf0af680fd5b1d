"""Build hook: generate the authz.v1 protobuf and gRPC code from protos/ when the package is built.

Every build (a wheel, an sdist's wheel, `pip install .`, an editable install) runs grpcio-tools'
protoc, pinned in pyproject.toml's build requirements, so the wheel always carries generated code
that matches the dependency floors declared next to it. Everything else is in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTOS = ROOT / "protos"
# (file, generate gRPC stubs too)
API_FILES = (("authz/v1/authz.proto", True), ("authz/v1/wire.proto", False))


def generate() -> None:
    """Run protoc for each API file into the source tree (authz/v1/), where build_py picks it up."""
    from grpc_tools import protoc   # a build requirement; imported only when building
    include = Path(protoc.__file__).resolve().parent / "_proto"
    for name, with_grpc in API_FILES:
        args = ["grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={ROOT}", f"--pyi_out={ROOT}"]
        if with_grpc:
            args.append(f"--grpc_python_out={ROOT}")
        if protoc.main([*args, str(PROTOS / name)]) != 0:
            raise SystemExit(f"protoc failed on protos/{name}")


class BuildWithProtos(build_py):
    def run(self) -> None:
        generate()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
