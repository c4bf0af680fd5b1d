"""The conformance cases and spec carried in tests/data/ are the reference copies from ../shared, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.testdata import CONFORMANCE_DIR, DATA_DIR, SHARED_DIR, SPEC_FILE

CARRIED = sorted(p.relative_to(DATA_DIR) for p in DATA_DIR.rglob("*") if p.is_file())


def test_the_repository_carries_every_conformance_file_and_the_spec() -> None:
    names = {str(p) for p in CARRIED}
    assert {"conformance/decisions.jsonl", "conformance/validation.jsonl", "conformance/http-mapping.jsonl",
            "conformance/README.md", "spec/iam-spec.md"} <= names
    # The runners read the carried copies unless told otherwise.
    assert CONFORMANCE_DIR.is_dir() and SPEC_FILE.is_file()


@pytest.mark.skipif(not SHARED_DIR.is_dir(), reason=f"no reference copy at {SHARED_DIR} (a plain clone)")
@pytest.mark.parametrize("relative", CARRIED, ids=str)
def test_carried_copy_equals_the_reference(relative: Path) -> None:
    reference = SHARED_DIR / relative
    assert reference.is_file(), f"{relative} is carried in tests/data but not in {SHARED_DIR}"
    assert (DATA_DIR / relative).read_bytes() == reference.read_bytes(), (
        f"tests/data/{relative} differs from {reference}: copy the reference again")


@pytest.mark.skipif(not SHARED_DIR.is_dir(), reason=f"no reference copy at {SHARED_DIR} (a plain clone)")
def test_every_reference_file_is_carried() -> None:
    reference = {p.relative_to(SHARED_DIR) for sub in ("conformance", "spec")
                 for p in (SHARED_DIR / sub).rglob("*") if p.is_file()}
    assert reference <= set(CARRIED), f"not carried in tests/data: {sorted(map(str, reference - set(CARRIED)))}"
