"""Process memory after a reload: the freed heap handed back and the new state frozen out of the collector's way."""

from __future__ import annotations

import ctypes
import gc


def release_memory() -> None:
    """After a reload the previous state is garbage: hand the freed heap back to the system, so
    resident memory does not ratchet up by one state per reload (glibc keeps it otherwise).

    What survives (the new state, hundreds of thousands of objects at scale) is then frozen out of
    the cyclic collector's way: later collections scan only objects made since, instead of walking
    the whole policy set every time caches grow. The next reload unfreezes it first, so a
    superseded state is always collected.

    A process-wide tuning, so the process decides: the server registers it as a reload hook
    (Store.on_reload); the store itself never calls it.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to do
        pass
