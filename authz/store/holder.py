"""The snapshot holder: the current snapshot, its swap and listeners, reload, worker sync, the op log and the watcher.

Readers take the current snapshot reference and never lock; writers (admin calls, reloads)
serialise on one lock, build the new state off to the side, persist it, and swap one reference.
Every new state is published here: by a reload (the bundle plus the op log replayed onto it), by a
worker's sync (the ops other processes appended) or by one committed op (an admin write, AssumeRole).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..evaluate import DEFAULT_OPTIONS, EngineOptions
from .bundle import BundleError, load_bundle, signature
from .cache import DecisionCache
from .errors import StoreError
from .oplog import OpLog
from .snapshot import PolicyCompiler, Snapshot
from .state import IamState, PrincipalGone, apply_op, compiling, op_digest, transaction, with_generated_values

log = logging.getLogger("authz.store")

DEFAULT_CACHE_SIZE = 100_000
# Documents one load (a bundle read and the replay of the op log) compiles as it validates them, at most:
# about 0.3-0.5 ms each, so this bounds what eager compilation adds to a load (docs/performance.md,
# "Parse once"); the rest, and any beyond the compiled-policy cache's room, compile on first use.
EAGER_COMPILE_PER_LOAD = 5_000
DEFAULT_WATCH_INTERVAL = 1.0


@dataclass(frozen=True)
class StoreConfig:
    bundle_dir: Path | None = None
    state_dir: Path | None = None
    cache_size: int = DEFAULT_CACHE_SIZE
    options: EngineOptions = DEFAULT_OPTIONS
    watch_interval: float = DEFAULT_WATCH_INTERVAL     # seconds between bundle checks; 0 disables watching
    partition: str = "aws"


@dataclass
class StoreStatus:
    revision: int
    ready: bool
    last_load_error: str
    last_load_time: float
    counts: dict[str, int]
    cache: dict[str, int]
    reloads_ok: int
    reloads_failed: int
    replay_skipped: int
    extra: dict[str, Any] = field(default_factory=dict)


class CompileHook:
    """The compile hook of state.check_policy: compiles a validated document from the validator's parse.

    `budget` bounds a bulk load: at most that many documents compiled, and only while the compiled-policy
    cache has room. A single admin write has no budget: it compiles the few documents it carries.
    A document that fails to compile here is left to its first decision (which reports the failure)."""

    def __init__(self, compiler: PolicyCompiler, budget: int | None = None) -> None:
        self._compiler = compiler
        self._left = budget

    def __call__(self, name: str, text: str, document: Any) -> None:
        if self._left is not None and self._left <= 0:
            return
        try:
            compiled = self._compiler.adopt(name, text, document, evict=self._left is None)
        except Exception:   # pragma: no cover - compilation is lenient; a bug here must not refuse a valid write
            log.exception("compiling %s failed; it compiles on first use", name)
            return
        if compiled and self._left is not None:
            self._left -= 1


class SnapshotHolder:
    """The current snapshot and every way a new one is published (see the module docstring)."""

    def __init__(self, config: StoreConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.compiler = PolicyCompiler()
        self.cache = DecisionCache(config.cache_size)
        self._write_lock = threading.RLock()
        self._reload_lock = threading.Lock()    # reloads in order: a later read is never published first
        self._base = IamState()
        self._state = IamState()
        self._ops: list[dict[str, Any]] = []
        self._revision = 0
        self._snapshot = Snapshot(self._state, 0, self.compiler)
        self._ready = False
        self._last_error = ""
        self._last_load = 0.0
        self._reloads_ok = 0
        self._reloads_failed = 0
        self._replay_skipped = 0
        self._oplog: OpLog | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._reload_hooks: list[Callable[[], None]] = []

    # ------------------------------------------------------------ life cycle

    def open(self) -> None:
        """Open the state database and load the first policy set. The store is `ready` once a
        policy set has loaded; a bundle that fails at start-up leaves it not ready (serving
        nothing) until a good bundle appears."""
        if self.config.state_dir is not None:
            self._oplog = OpLog(self.config.state_dir)
            self._ops = self._oplog.all()
        self.reload()
        if self.config.bundle_dir is not None and self.config.watch_interval > 0:
            self._watcher = threading.Thread(target=self._watch, name="bundle-watcher", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self._oplog is not None:
            self._oplog.close()

    def on_swap(self, listener: Callable[[Snapshot], None]) -> None:
        self._listeners.append(listener)

    def on_reload(self, hook: Callable[[], None]) -> None:
        """Call `hook` after each reload that loaded, once the previous state is garbage and the write
        lock is released (the server registers its allocator tuning, memory.release_memory, here)."""
        self._reload_hooks.append(hook)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def revision(self) -> int:
        return self._snapshot.revision

    def status(self) -> StoreStatus:
        snap = self._snapshot
        return StoreStatus(snap.revision, self._ready, self._last_error, self._last_load, snap.state.counts(),
                           self.cache.stats(), self._reloads_ok, self._reloads_failed, self._replay_skipped)

    def _swap(self, state: IamState) -> None:
        """Publish a new snapshot; callers hold the write lock."""
        self._state = state
        self._revision += 1
        snap = Snapshot(state, self._revision, self.compiler)
        self._snapshot = snap           # the one reference readers take
        self.cache.clear()              # keys carry the revision: older entries are dead weight from now on
        for listener in self._listeners:
            try:
                listener(snap)
            except Exception:  # pragma: no cover - a listener must never break a write
                log.exception("snapshot listener failed")

    def reload(self) -> tuple[bool, str]:
        """Re-read the bundle and re-apply the persisted admin changes. A bundle that does not
        load keeps the last good snapshot serving; the error is returned and kept for Status.

        Reloads (the watcher's and the admin Reload call) run one at a time: otherwise a reload that
        read the bundle earlier could publish its older content after a later one.
        """
        with self._reload_lock:
            return self._reload()

    def _reload(self) -> tuple[bool, str]:
        bulk = CompileHook(self.compiler, EAGER_COMPILE_PER_LOAD)
        try:
            with compiling(bulk):
                base = load_bundle(self.config.bundle_dir) if self.config.bundle_dir is not None else IamState()
        except (BundleError, OSError, StoreError, ValueError) as exc:
            msg = str(exc) if isinstance(exc, StoreError) else f"cannot read the bundle: {exc}"
            with self._write_lock:
                self._last_error = msg
                self._reloads_failed += 1
            log.error("bundle rejected, still serving revision %d: %s", self._revision, msg)
            return False, msg
        with self._write_lock:
            state = self._replay(base, bulk)
            self._last_error = ""
            self._last_load = self.clock()
            self._reloads_ok += 1
        log.info("loaded policy set revision %d: %s", self._revision, state.counts())
        del state, base
        for hook in self._reload_hooks:
            hook()
        return True, ""

    def _replay(self, base: IamState, compile_hook: CompileHook | None = None) -> IamState:
        """Apply the persisted ops to `base` and publish the result; callers hold the write lock.

        A persisted op whose principal was in the state served until now but is gone from the new one
        (a bundle reload dropped it, or it is another principal now) is retired: a RetireOps op naming
        it is appended to the log, and it is skipped from then on. So a principal that disappears from
        the bundle and comes back later, with the same name and even the same derived unique id, starts
        afresh, as a re-created IAM principal does: its old sessions, access keys, policies and group
        memberships from admin calls are not revived.
        """
        previous = self._state
        retired = {d for o in self._ops if o.get("op") == "RetireOps" for d in o.get("digests") or ()}
        state, skipped, retire = base, 0, []
        hook = compile_hook or CompileHook(self.compiler, EAGER_COMPILE_PER_LOAD)
        with transaction(), compiling(hook):   # `base` itself is never modified: sync() replays onto it again
            for o in self._ops:
                if retired and o.get("op") != "RetireOps" and op_digest(o) in retired:
                    continue
                try:
                    state = apply_op(state, o)
                except PrincipalGone as exc:
                    skipped += 1
                    if exc.existed_in(previous):
                        retire.append(op_digest(o))
                    log.warning("persisted change %s no longer applies: %s", o.get("op"), exc)
                except StoreError as exc:
                    skipped += 1
                    log.warning("persisted change %s no longer applies to the bundle: %s", o.get("op"), exc)
        if retire:
            self._retire(retire)
        self._base = base
        self._replay_skipped = skipped
        self._ready = True          # before the swap, so that on_swap listeners see a ready store
        self._swap(state)
        return state

    def _retire(self, digests: list[str]) -> None:
        """Log that these ops are retired (see _replay); callers hold the write lock."""
        record = {"op": "RetireOps", "digests": digests}
        try:
            if self._oplog is not None:
                self._oplog.append(record)
        except StoreError as exc:   # the next reload tries again; the ops do not apply meanwhile anyway
            log.error("could not record %d retired change(s): %s", len(digests), exc)
            return
        self._ops.append(record)
        log.warning("retired %d persisted change(s) whose principal is gone", len(digests))

    # ------------------------------------------------------------ worker sync

    def sync(self) -> bool:
        """Pick up ops that other processes sharing --state-dir appended to the op log (server --workers).

        True when the log had grown and the state was rebuilt from the last good bundle plus every op.
        """
        if self._oplog is None or not self._ready:
            return False
        with self._write_lock:
            if self._oplog.count() == len(self._ops):
                return False
            self._ops = self._oplog.all()
            self._replay(self._base)
        return True

    # ------------------------------------------------------------ the bundle watcher

    def _watch(self) -> None:
        assert self.config.bundle_dir is not None
        seen = signature(self.config.bundle_dir)
        pending = None
        while not self._stop.wait(self.config.watch_interval):
            sig = signature(self.config.bundle_dir)
            if sig == seen:
                pending = None
                continue
            if sig != pending:        # wait one more interval: files may still be being written
                pending = sig
                continue
            seen, pending = sig, None
            if sig.missing:
                with self._write_lock:
                    self._last_error = f"bundle directory {self.config.bundle_dir} is missing or unreadable"
                    self._reloads_failed += 1
                log.error("%s; still serving revision %d", self._last_error, self._revision)
                continue
            self.reload()

    # ------------------------------------------------------------ one op

    def commit(self, op: dict[str, Any]) -> IamState:
        """Apply, persist, publish: all or nothing. The op is logged with the unique ids it creates and
        of the principals it addresses (state.with_generated_values), so that its replay is exact."""
        with self._write_lock, compiling(CompileHook(self.compiler)):
            op = with_generated_values(self._state, op)
            state = apply_op(self._state, op)
            if self._oplog is not None:
                self._oplog.append(op)
            self._ops.append(op)
            self._swap(state)
            return state

