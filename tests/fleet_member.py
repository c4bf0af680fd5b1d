"""A fleet member for the tests: a Store on a shared PostgreSQL store, following the others on its own thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from authz.store import Store, StoreConfig

ACCT = "123456789012"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
PUT = "kinesisvideo:PutMedia"
KEY = os.urandom(32)    # the fleet key of one test session
WAIT = 30.0             # an upper bound on waiting for a notification or a condition, never a fixed sleep


class Member:
    """One store of the fleet (with a local copy when given a state dir), following the others on its own thread."""

    def __init__(self, url: str, state_dir: Path | None = None, key: bytes = KEY) -> None:
        self.store = Store(StoreConfig(store_url=url, store_key=key, state_dir=state_dir, watch_interval=0))
        self._changed = threading.Condition()
        self.store.on_swap(self._notify)
        self.store.open()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.store.follow, args=(self._stop, 0.2), daemon=True)
        self._thread.start()

    def _notify(self, _snapshot: object) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, revision: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.store.ready and self.store.revision >= revision, WAIT), (
                f"revision {revision} never arrived (at {self.store.revision})")

    def decision(self, principal: str = CAMERA, action: str = PUT, resource: str = YOUR_STREAM) -> str:
        return self.store.authorize(principal, action, resource).result.decision.value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.store.close()
