"""The hot modules compiled to C with mypyc (`make native`), and whether this process runs that build or the sources.

The decision path (request bytes in, answer bytes out: the engine, its matchers and conditions, the store's
decisions and decision cache, the answer memo, the Envoy Check path) is plain typed Python, and `make setup`
also compiles those modules with mypyc into extension modules beside their sources (`setup.py`, AUTHZ_NATIVE=1).
The sources stay the reference: the compiled build is the same code, and tests/test_native.py checks that both
give the same answers.

A compiled module is used only while it is newer than every source file of the package: after any edit (or a
checkout) the build is stale, and then every listed module is loaded from its source instead, all together,
because compiled modules call each other directly. AUTHZ_PURE_PYTHON=1 asks for the sources always. `mode()`
says which one this process runs (the server logs it at start and `Status` reports it).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

# The modules compiled together into one extension (authz._native__mypyc) plus one small module each.
MODULES: tuple[str, ...] = (
    "authz.evaluate",
    "authz.requests",
    "authz.policy.arn",
    "authz.policy.conditions",
    "authz.policy.glob",
    "authz.policy.limits",
    "authz.policy.model",
    "authz.policy.principals",
    "authz.policy.variables",
    "authz.store.cache",
    "authz.store.decisions",
    "authz.store.snapshot",
    "authz.server.answers",
    "authz.server.convert",
    "authz.gateway.mapping",
    "authz.gateway.principal",
    "authz.gateway.sigv4",
)
_LISTED = frozenset(MODULES)
GROUP = "authz._native"          # the shared library: authz/_native__mypyc.<abi>.so
PURE_ENV = "AUTHZ_PURE_PYTHON"   # set (to anything but "" or "0") to run the sources even when a fresh build exists

PACKAGE = Path(__file__).resolve().parent
_mode = "pure Python (not yet decided)"


def source_path(module: str) -> Path:
    return PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")


def extension_paths(module: str) -> list[Path]:
    """The compiled files present for `module` (normally one, for this interpreter's ABI)."""
    base = source_path(module).with_suffix("")
    return [p for suffix in importlib.machinery.EXTENSION_SUFFIXES
            for p in [base.with_name(base.name + suffix)] if p.exists()]


def newest_source(package: Path = PACKAGE) -> float:
    """The newest modification time of any .py file of the package (generated code included)."""
    newest = 0.0
    for root, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
    return newest


def build_state(modules: Sequence[str] = MODULES) -> tuple[bool, str]:
    """(whether a complete compiled build newer than every source is present, why not when it is not)."""
    built: list[Path] = []
    for module in (*modules, GROUP + "__mypyc"):
        found = extension_paths(module)
        if not found:
            return False, "no compiled build (run `make native`)"
        built.extend(found)
    if min(p.stat().st_mtime for p in built) < newest_source():
        return False, "the compiled build is older than the sources (run `make native`)"
    return True, ""


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds modules of the package as their .py files, ahead of compiled files beside them: the listed modules
    (when the build is not used), and always any module compiled by an earlier build but no longer listed."""

    def __init__(self, listed_too: bool) -> None:
        self._listed_too = listed_too

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("authz."):
            return None
        if fullname in _LISTED:
            if not self._listed_too:
                return None
        elif not extension_paths(fullname):
            return None
        source = source_path(fullname)
        return importlib.util.spec_from_file_location(fullname, source) if source.is_file() else None


def install() -> None:
    """Decide, once per process and before any listed module is imported, which build this process runs."""
    global _mode
    if any(m in sys.modules for m in MODULES):
        return
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        fresh, why = False, f"{PURE_ENV} is set"
    else:
        fresh, why = build_state()
    if fresh:
        _mode = "compiled (mypyc)"
        sys.meta_path.insert(0, _SourcesFirst(listed_too=False))
        return
    _mode = f"pure Python ({why})" if extension_paths(MODULES[0]) or os.environ.get(PURE_ENV) else "pure Python"
    sys.meta_path.insert(0, _SourcesFirst(listed_too=True))


def mode() -> str:
    """'compiled (mypyc)' or 'pure Python', with the reason when a compiled build is present but not used."""
    return _mode


def compiled() -> bool:
    """Whether this process runs the compiled build (where the import system finds the listed modules now)."""
    spec = importlib.util.find_spec(MODULES[0])
    return spec is not None and not str(spec.origin).endswith(".py")
