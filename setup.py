"""Build hook: generate the authz.v1 protobuf and gRPC code from protos/ when the package is built.

Every build (a wheel, an sdist's wheel, `pip install .`, an editable install) runs grpcio-tools'
protoc, pinned in pyproject.toml's build requirements, so the wheel always carries generated code
that matches the dependency floors declared next to it. Everything else is in pyproject.toml.

With AUTHZ_NATIVE=1 (what `make native` does: `AUTHZ_NATIVE=1 python setup.py build_ext --inplace`), the modules
listed in authz/native.py are also compiled with mypyc into extension modules beside their sources (mypy and a C
compiler needed); authz/native.py decides at import whether that build is used.
"""

from __future__ import annotations

import os
import runpy
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


def native_extensions() -> list:
    """The mypyc extension modules, when AUTHZ_NATIVE=1; none otherwise."""
    if os.environ.get("AUTHZ_NATIVE", "") in ("", "0"):
        return []
    from mypyc.build import mypycify   # mypy's compiler; imported only when asked for
    listed = runpy.run_path(str(ROOT / "authz" / "native.py"))   # the list, without importing the package
    paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in listed["MODULES"]]
    return mypycify(paths, group_name=listed["GROUP"], opt_level="3")


setup(cmdclass={"build_py": BuildWithProtos}, ext_modules=native_extensions())
