"""Where the test data lives: the copies of the conformance cases and the spec carried in tests/data/.

The repository carries its own copy so that `make test` runs every test in a plain clone. The
reference copies in ../shared (when present beside the checkout) must be identical:
tests/test_testdata.py checks that. AUTHZ_CONFORMANCE_DIR / AUTHZ_SPEC_FILE point the tests elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"

CONFORMANCE_DIR = Path(os.environ.get("AUTHZ_CONFORMANCE_DIR") or DATA_DIR / "conformance")
SPEC_FILE = Path(os.environ.get("AUTHZ_SPEC_FILE") or DATA_DIR / "spec" / "iam-spec.md")
