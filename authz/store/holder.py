"""The snapshot holder: the current snapshot, the change log it follows, reload, worker sync, listeners and the watcher.

Readers take the current snapshot reference and never lock; writers (admin calls, AssumeRole,
reloads) serialise on one lock, build the new state off to the side, commit it to the change log,
and swap one reference. The revision of a snapshot is the change log's sequence number of the last
change it holds: the same in every process that shares the log (--workers), and across restarts.

Every new state is published here, with a Change saying what it touched (changes.py):
- a reload: the bundle, then every logged change replayed onto it (a LoadBundle record marks it in
  the log). A logged change that no longer applies to the bundle is a hard error naming it (the
  bundle is refused as an invalid one is), except one addressed to a principal the bundle no longer
  has: that one is retired (a RetireOps record) and never applies again;
- one committed change (an admin write, AssumeRole), applied as a delta to the current state;
- a worker's sync: the changes other processes appended, each applied as a delta, in log order.
"""

from __future__ import annotations

import logging
import threading
import time
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..evaluate import DEFAULT_OPTIONS, EngineOptions
from .bundle import BundleError, apply_documents, bundle_files, read_file, signature
from .cache import DecisionCache, Validity
from .changelog import ChangeLog, Entry, MemoryLog, Record
from .changes import EVERYTHING, NOTHING, Change, Touched
from .errors import StorageFailure, StoreError
from .oplog import OpLog
from .snapshot import Memos, PolicyCompiler, Snapshot
from .ops import apply_change, apply_op, op_digest, with_generated_values
from .state import IamState, PrincipalGone, compiling, freeze, transaction

if TYPE_CHECKING:
    from .localcopy import CopiedLog

log = logging.getLogger("authz.store")

DEFAULT_CACHE_SIZE = 100_000
# Documents one load (a bundle read and the replay of the op log) compiles as it validates them, at most:
# about 0.3-0.5 ms each, so this bounds what eager compilation adds to a load (docs/performance.md,
# "Parse once"); the rest, and any beyond the compiled-policy cache's room, compile on first use.
EAGER_COMPILE_PER_LOAD = 5_000
DEFAULT_WATCH_INTERVAL = 1.0
# A write that finds the log advanced by another process in a way it cannot apply as a delta (a bundle
# load it has not read, a change that does not apply here) catches up and tries again, at most this often.
COMMIT_ATTEMPTS = 3
NOTHING_PUBLISHED = ("the store holds no bundle yet: publish one with `authz push --store URL DIR`; serving nothing "
                     "until then")
LOAD_BUNDLE = "LoadBundle"     # the log record of a bundle load: {"op": LOAD_BUNDLE, "digest": sha256 of its files}
RETIRE_OPS = "RetireOps"       # the log record retiring changes whose principal is gone (see the module docstring)


@dataclass(frozen=True)
class StoreConfig:
    bundle_dir: Path | None = None
    state_dir: Path | None = None
    # Fleet mode: the change log (and the published bundle) in a shared PostgreSQL database, its
    # secrets sealed with `store_key` (sealed.py). Exclusive with bundle_dir: the store holds the bundle.
    store_url: str | None = None
    store_key: bytes | None = None
    cache_size: int = DEFAULT_CACHE_SIZE
    options: EngineOptions = DEFAULT_OPTIONS
    watch_interval: float = DEFAULT_WATCH_INTERVAL     # seconds between bundle checks; 0 disables watching
    partition: str = "aws"
    # A reload's last check (--require-no-new-access): (the state being served, the reloaded one) -> "" to
    # admit it, else why it is refused. A refused bundle is treated as an invalid one: the last good state
    # keeps serving and the reason is the load error. Bundle directories only (a fleet gates `authz push`).
    admit: Callable[[IamState, IamState], str] | None = None


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
    replay_skipped: int          # logged changes retired by the last load (their principal is gone)
    store_error: str = ""        # fleet mode: why the shared store is unreachable now ("" while it answers)
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


class ReplayError(StoreError):
    """A logged change no longer applies to the bundle: the bundle is refused (never the change dropped)."""


class NotAdmitted(StoreError):
    """The bundle loads but its admission check refuses it (e.g. it grants new access): nothing changes."""


def admission(admit: Callable[[IamState, IamState], str], old: IamState, new: IamState) -> str:
    """The admission check's verdict; a check that fails refuses the bundle (fail closed)."""
    try:
        return admit(old, new)
    except Exception as exc:   # noqa: BLE001 - any failure of the check refuses the bundle
        log.exception("the bundle's admission check failed")
        return f"the bundle could not be checked, so it is refused: {type(exc).__name__}: {exc}"


Documents = list[tuple[str, Any]]        # a bundle: (file name, parsed content) in file order


def read_bundle(directory: Path) -> tuple[str, Documents]:
    """A bundle directory's documents and their digest (what a LoadBundle record names): SHA-256 of the
    documents' canonical JSON, so an edit that changes no content (spacing, comments) is the same bundle."""
    docs = [(path.name, read_file(path)) for path in bundle_files(directory)]
    return documents_digest(docs), docs


def documents_digest(docs: Documents) -> str:
    text = json.dumps(docs, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _published(records: list[Entry]) -> tuple[int, str] | None:
    """(sequence number, digest) of the last LoadBundle record, or None."""
    for seq, r in reversed(records):
        if r.get("op") == LOAD_BUNDLE:
            return seq, str(r.get("digest"))
    return None


def _describe(seq: int, record: Mapping[str, Any]) -> str:
    """A logged change as an error names it: its number, op and whom it is addressed to (never secrets)."""
    parts = [str(record.get("op"))]
    for k in ("kind", "account", "name", "user", "group", "policy_name", "policy_arn", "arn", "role_arn"):
        v = record.get(k)
        if isinstance(v, str) and v:
            parts.append(f"{k}={v}")
    return f"change #{seq} ({' '.join(parts)})"


class _Behind(Exception):
    """The log holds changes of another process this one must catch up on before it can write."""


class SnapshotHolder:
    """The current snapshot and every way a new one is published (see the module docstring)."""

    def __init__(self, config: StoreConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.compiler = PolicyCompiler()
        self.validity = Validity()
        self.cache = DecisionCache(config.cache_size, self.validity)
        self.memos = Memos(self.validity)
        self._write_lock = threading.RLock()
        self._reload_lock = threading.Lock()    # reloads in order: a later read is never published first
        self._log: ChangeLog = MemoryLog()
        self._copy: CopiedLog | None = None     # fleet mode with a state dir: the local copy (localcopy.py)
        self._records: list[Entry] = []         # every logged change this state holds, in log order
        self._retired: set[str] = set()         # digests of the retired ones
        self._bundle_digest: str | None = None
        self._state = IamState()
        self._snapshot = Snapshot(self._state, 0, self.compiler, self.memos)
        self._ready = False
        self._last_error = ""
        self._last_load = 0.0
        self._reloads_ok = 0
        self._reloads_failed = 0
        self._replay_skipped = 0
        self._store_error = ""
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._listeners: list[Callable[[Snapshot, Change], None]] = []
        self._reload_hooks: list[Callable[[], None]] = []

    # ------------------------------------------------------------ life cycle

    def open(self, load: bool = True) -> None:
        """Open the change log and load the first policy set. The store is `ready` once a policy set
        has loaded; a bundle that fails at start-up leaves it not ready (serving nothing) until a good
        bundle appears. `load=False` opens the log only (`authz push` publishes without loading what
        the store holds)."""
        if self.config.store_url is not None:
            from .pglog import PgChangeLog
            from .sealed import SealedLog

            if self.config.store_key is None:
                raise StoreError("fleet mode needs the store key that seals secrets in the shared store")
            shared = PgChangeLog(self.config.store_url)
            store: ChangeLog = shared
            if self.config.state_dir is not None:       # what this member applies is kept there, still sealed
                from .localcopy import CopiedLog

                store = self._copy = CopiedLog(shared, self.config.state_dir)
            self._log = SealedLog(store, self.config.store_key)
        elif self.config.state_dir is not None:
            self._log = OpLog(self.config.state_dir)
        if not load:
            return
        self.reload()
        if self.config.bundle_dir is not None and self.config.watch_interval > 0:
            self._watcher = threading.Thread(target=self._watch, name="bundle-watcher", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._log.close()

    def on_swap(self, listener: Callable[[Snapshot], None]) -> None:
        """Call `listener` with every snapshot published."""
        self._listeners.append(lambda snap, _change: listener(snap))

    def on_change(self, listener: Callable[[Snapshot, Change], None]) -> None:
        """Call `listener` with every snapshot published and the change that produced it (the change feed)."""
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
                           self.cache.stats(), self._reloads_ok, self._reloads_failed, self._replay_skipped,
                           self._store_error)

    def _publish(self, state: IamState, revision: int, kind: str, touched: Touched) -> None:
        """Publish `state` as `revision`; callers hold the write lock. What the change touched is
        recorded first, so a reader that sees the new snapshot never reuses a result it invalidates."""
        self.validity.touch(touched, revision)
        if touched.everything:          # nothing remembered can be hit again: free the memory now
            self.cache.clear()
            self.memos.clear()
        self._state = state
        snap = Snapshot(state, revision, self.compiler, self.memos)
        self._snapshot = snap           # the one reference readers take
        change = Change(revision, kind, touched)
        for listener in self._listeners:
            try:
                listener(snap, change)
            except Exception:  # pragma: no cover - a listener must never break a write
                log.exception("snapshot listener failed")

    # ------------------------------------------------------------ reload

    def reload(self) -> tuple[bool, str]:
        """Re-read the bundle and re-apply the logged changes. A bundle that does not load, or to which
        a logged change no longer applies, keeps the last good snapshot serving; the error is returned
        and kept for Status.

        Reloads (the watcher's, the admin Reload call, a worker's catching up on another's bundle load)
        run one at a time: otherwise a reload that read the bundle earlier could publish its older
        content after a later one.
        """
        with self._reload_lock:
            return self._reload()

    def _refuse(self, msg: str) -> tuple[bool, str]:
        with self._write_lock:
            self._last_error = msg
            self._reloads_failed += 1
        log.error("bundle rejected, still serving revision %d: %s", self.revision, msg)
        return False, msg

    def _reload(self) -> tuple[bool, str]:
        for _ in range(COMMIT_ATTEMPTS):
            try:
                return self._reload_once()
            except _Behind:
                continue            # the log moved in a way only another pass can apply: read again
        return self._refuse(f"the change log kept changing under the reload ({COMMIT_ATTEMPTS} attempts); "
                            "it is retried at the next change")

    def _base(self, records: list[Entry], bulk: CompileHook) -> tuple[str, IamState]:
        """The bundle the state starts from, and its digest: the bundle directory's, or in fleet mode the
        one published to the store (the last LoadBundle record carrying documents)."""
        if self.config.bundle_dir is not None:
            digest, docs = read_bundle(self.config.bundle_dir)
        else:
            found = _published(records)
            if found is None:
                return "", IamState()
            seq, digest = found
            docs = self._documents(seq, records)
        with compiling(bulk):
            return digest, apply_documents(docs)

    def _documents(self, seq: int, records: list[Entry]) -> Documents:
        """The documents of LoadBundle record `seq` (kept in memory without them: read from the log)."""
        record = next((r for s, r in records if s == seq), {})
        docs = record.get("documents")
        if docs is None:
            docs = next((r.get("documents") for s, r in self._log.read(seq - 1) if s == seq), None)
        return [(str(name), doc) for name, doc in docs or ()]

    def _reload_once(self) -> tuple[bool, str]:
        bulk = CompileHook(self.compiler, EAGER_COMPILE_PER_LOAD)
        try:
            records = self._records + self._log.read(self._head())
            digest, base = self._base(records, bulk)
            state, retire = self._replay(base, records, bulk)      # outside any lock: may take seconds
        except StorageFailure as exc:
            return self._unreadable(exc)
        except (BundleError, OSError, StoreError, ValueError) as exc:
            return self._refuse(str(exc) if isinstance(exc, StoreError) else f"cannot read the bundle: {exc}")
        if self.config.admit is not None and self.config.bundle_dir is not None and self._ready:
            why = admission(self.config.admit, self.snapshot.state, state)
            if why:
                return self._refuse(why)
        files = self.config.bundle_dir is not None
        if self.config.store_url is not None and _published(records) is None:
            with self._write_lock:
                self._last_error = NOTHING_PUBLISHED
            return False, NOTHING_PUBLISHED         # not ready: it loads when a bundle is published
        position = records[-1][0] if records else 0
        with self._write_lock:
            caught: list[Entry] = []
            written: list[Record] = []
            staged: list[IamState] = [state]

            def build(entries: list[Entry]) -> list[Record]:
                """Catch up, as deltas, on what others logged since `records`; then what this load logs:
                the retired changes, and the bundle load unless the log's last one is this bundle."""
                caught[:] = entries
                st = state
                for seq, r in entries:
                    if r.get("op") == LOAD_BUNDLE and r.get("digest") != digest:
                        raise _Behind()
                    st, _touched = self._delta(st, seq, r, retired=retire)
                staged[0] = st
                already = {d for _, r in entries if r.get("op") == RETIRE_OPS for d in r.get("digests") or ()}
                fresh = [d for d in retire if d not in already]
                written[:] = [{"op": RETIRE_OPS, "digests": fresh}] if fresh else []
                if files and (_published(records + entries) or (0, None))[1] != digest:
                    written.append({"op": LOAD_BUNDLE, "digest": digest})
                return list(written)

            if retire or (files and (_published(records) or (0, None))[1] != digest):
                try:
                    seqs = self._log.write(position, build)
                except StoreError as exc:
                    return self._refuse(str(exc))
                new = caught + list(zip(seqs, written))
            else:
                build(self._log.read(position))      # nothing to write: catch up on what came meanwhile
                new = list(caught)
            records = records + new
            self._records = [(seq, _without_documents(r)) for seq, r in records]
            if self._copy is not None and records:
                self._copy.keep_through(records[-1][0])
            self._retired = {d for _, r in records if r.get("op") == RETIRE_OPS for d in r.get("digests") or ()}
            self._bundle_digest = digest
            self._replay_skipped = len(retire)
            self._last_error = ""
            self._last_load = self.clock()
            self._reloads_ok += 1
            first = not self._ready
            if first:
                # The first load: nothing older to free, so the reload hooks (the server's memory tuning, a
                # full collection) run before the store says it is ready: its first decisions run at speed.
                del base, state
                for hook in self._reload_hooks:
                    hook()
            self._ready = True          # before the publish, so that listeners see a ready store
            self._publish(staged[0], records[-1][0] if records else 0, LOAD_BUNDLE, EVERYTHING)
            counts = staged[0].counts()
        log.info("loaded policy set revision %d: %s", self.revision, counts)
        if not first:
            del staged, base, state
            for hook in self._reload_hooks:
                hook()
        return True, ""

    def _unreadable(self, exc: StorageFailure) -> tuple[bool, str]:
        """A reload that could not read the change log. In fleet mode, a member that has nothing loaded yet
        while the store is unreachable serves its local copy (the last state it applied) and says so in
        Status; with no copy to serve it stays not ready, saying why. Otherwise the reload is refused."""
        from .pglog import StoreUnreachable

        if not isinstance(exc, StoreUnreachable):
            return self._refuse(str(exc))
        if self._ready:
            self._store_error = str(exc)
            return self._refuse(str(exc))
        if self._copy is not None:
            try:
                return self._serve_copy(exc)
            except (BundleError, OSError, StoreError, ValueError) as refused:
                exc = refused if isinstance(refused, StorageFailure) else StorageFailure(
                    f"{exc}. The local copy of the store does not load ({refused}): not serving until the store "
                    "answers")
        with self._write_lock:
            self._store_error = self._last_error = str(exc)
            self._reloads_failed += 1
        log.error("not serving: %s", exc)
        return False, str(exc)

    def _serve_copy(self, failure: StorageFailure) -> tuple[bool, str]:
        """Load the state of the local copy (records as the store held them, opened with the fleet key)."""
        from .sealed import SealedLog

        assert self._copy is not None and self.config.store_key is not None
        bulk = CompileHook(self.compiler, EAGER_COMPILE_PER_LOAD)
        records = SealedLog(self._copy.offline(failure), self.config.store_key).read(0)
        digest, base = self._base(records, bulk)
        state, retire = self._replay(base, records, bulk)
        revision = records[-1][0]
        note = (f"{failure}. Serving the local copy of the store ({self._copy.copy.dir}) at revision {revision} "
                "until the store answers")
        with self._write_lock:
            self._records = [(seq, _without_documents(r)) for seq, r in records]
            self._retired = {d for _, r in records if r.get("op") == RETIRE_OPS for d in r.get("digests") or ()}
            self._retired.update(retire)
            self._bundle_digest = digest
            self._replay_skipped = len(retire)
            self._store_error, self._last_error = note, ""
            self._last_load = self.clock()
            self._reloads_ok += 1
            self._ready = True
            self._publish(state, revision, LOAD_BUNDLE, EVERYTHING)
        log.error("%s", note)
        del state, base
        for hook in self._reload_hooks:
            hook()
        return True, ""

    def _head(self) -> int:
        """The log position the current state holds (the last record applied)."""
        return self._records[-1][0] if self._records else 0

    def _replay(self, base: IamState, records: list[Entry], compile_hook: CompileHook) -> tuple[IamState, list[str]]:
        """`base` with every logged change applied, and the digests of the changes to retire now.

        A change addressed to a principal that is gone (the bundle no longer has it, or has another
        principal under its name) is retired: so a principal that disappears from the bundle and comes
        back later, with the same name and even the same derived unique id, starts afresh, as a
        re-created IAM principal does. Any other change that does not apply raises ReplayError naming it.
        `base` itself is never modified."""
        retired = {d for _, r in records if r.get("op") == RETIRE_OPS for d in r.get("digests") or ()}
        state, retire = base, []
        with transaction(), compiling(compile_hook):
            for seq, r in records:
                name = r.get("op")
                if name in (RETIRE_OPS, LOAD_BUNDLE) or (retired and op_digest(r) in retired):
                    continue
                try:
                    state = apply_op(state, r)
                except PrincipalGone as exc:
                    retire.append(op_digest(r))
                    log.warning("%s is retired: %s", _describe(seq, r), exc)
                except StoreError as exc:
                    raise ReplayError(f"{_describe(seq, r)} no longer applies to the bundle: {exc}. Change the "
                                      "bundle so that it applies again (or undo the change through the admin "
                                      "API while the previous bundle is served)", exc.field) from None
        return freeze(state), retire        # tables back to persistent maps: the next write copies nothing

    # ------------------------------------------------------------ one change

    def commit(self, op: Any) -> IamState:
        """Validate `op` against the state at its place in the log's order, commit it, publish it: all or
        nothing. It is logged with the unique ids it creates and of the principals it addresses
        (state.with_generated_values), so that its replay is exact. Changes other processes appended
        since this one last read are applied first (as deltas), so the op is checked against them."""
        for _ in range(COMMIT_ATTEMPTS):
            with self._write_lock:
                try:
                    state = self._commit(op)
                    self._store_error = ""
                    return state
                except _Behind:
                    pass
                except StorageFailure as exc:
                    self._store_error = str(exc)
                    raise
            self.sync()
        raise StoreError("the change was not applied: the shared state kept changing under it "
                         f"({COMMIT_ATTEMPTS} attempts); retry")

    def _commit(self, op: Any) -> IamState:
        staged: list[tuple[int, Record, IamState, Touched]] = []

        def build(entries: list[Entry]) -> list[Record]:
            staged.clear()
            state = self._state
            for seq, r in entries:
                state, touched = self._delta(state, seq, r)
                staged.append((seq, r, state, touched))
            with compiling(CompileHook(self.compiler)):
                typed = with_generated_values(state, op)
                new, touched = apply_change(state, typed)
            record = typed.record()
            staged.append((0, record, new, touched))
            return [record]

        try:
            seqs = self._log.write(self._head(), build)
        except BaseException:
            # Refused (or not stored): what other processes logged before it is still adopted, so the
            # caller's next read sees the state its change was checked against.
            for seq, r, state, touched in staged:
                if seq:
                    self._adopt(seq, r)
                    self._publish(state, seq, str(r.get("op")), touched)
            raise
        seq, record, new, touched = staged[-1]
        staged[-1] = (seqs[0], record, new, touched)
        for seq, r, state, touched in staged:
            self._adopt(seq, r)
            self._publish(state, seq, str(r.get("op")), touched)
        return new

    def _delta(self, state: IamState, seq: int, r: Record, retired: list[str] | None = None
               ) -> tuple[IamState, Touched]:
        """Another process's logged change applied to `state`; _Behind when only a reload can apply it."""
        name = r.get("op")
        if name == LOAD_BUNDLE:
            if r.get("digest") != self._bundle_digest:
                raise _Behind()
            return state, NOTHING
        if name == RETIRE_OPS:
            return state, NOTHING
        if (retired or self._retired) and op_digest(r) in (retired or self._retired):
            return state, NOTHING
        try:
            return apply_change(state, r)
        except StoreError as exc:
            log.warning("%s from another process does not apply to this one's state (%s); rebuilding",
                        _describe(seq, r), exc)
            raise _Behind() from None

    def _adopt(self, seq: int, r: Record) -> None:
        self._records.append((seq, r))
        if self._copy is not None:
            self._copy.keep_through(seq)
        if r.get("op") == RETIRE_OPS:
            self._retired.update(r.get("digests") or ())

    # ------------------------------------------------------------ worker sync

    def sync(self) -> bool:
        """Apply the changes other processes sharing the log appended (server --workers), each as a delta
        in log order; a bundle load this process has not read, or a change that does not apply here,
        makes it reload instead. True when the log had grown."""
        if not self._ready:
            return False
        rebuild = False
        with self._write_lock:
            entries = self._log.read(self._head())
            if not entries:
                return False
            state = self._state
            for seq, r in entries:
                try:
                    state, touched = self._delta(state, seq, r)
                except _Behind:
                    rebuild = True
                    break
                self._adopt(seq, r)
                self._publish(state, seq, str(r.get("op")), touched)
        if rebuild:
            self.reload()
        return True

    def follow(self, stop: threading.Event, interval: float) -> None:
        """Apply what other processes log, as it comes, until `stop` (run it on its own thread): on the
        change log's notifications when it sends them (a shared store), else by looking every `interval`."""
        listen = getattr(self._log, "listen", None)
        if listen is not None:
            listen(self._on_head, stop, self._on_down)
            return
        seen = self._polled_head()
        while not stop.wait(interval):
            # A store that is not ready loads again only once the log moved (another process loaded a bundle):
            # its own failing bundle is the watcher's to retry, not every look's.
            head = self._polled_head()
            if self._ready or head != seen:
                seen = head
                self._sync_noting_outage()

    def _polled_head(self) -> int:
        try:
            return self._log.head()
        except StorageFailure:
            return -1

    def _on_down(self, exc: StorageFailure) -> None:
        """The change log's notifications stopped (the store is unreachable): Status and metrics say so;
        the next head delivered (after a reconnect) catches up and clears it."""
        if not self._store_error:       # one already set says more (e.g. that the local copy is served)
            log.error("%s; still serving revision %d", exc, self.revision)
            self._store_error = str(exc)

    def _on_head(self, head: int) -> None:
        if head > self._head() or not self._ready or self._store_error:
            self._sync_noting_outage()

    def _sync_noting_outage(self) -> None:
        try:
            if self._ready:
                self.sync()
            else:
                self.reload()
            self._store_error = ""
        except StorageFailure as exc:
            if not self._store_error:
                log.error("%s; still serving revision %d", exc, self.revision)
            self._store_error = str(exc)
        except StoreError as exc:
            log.warning("cannot follow the shared state: %s", exc)

    def publish_bundle(self, directory: Path, admit: Callable[[IamState, IamState], str] | None = None
                       ) -> tuple[int, bool]:
        """Fleet mode (`authz push`): publish the bundle in `directory` as the store's bundle, in one
        write; returns the revision and whether this call wrote it. The bundle is validated as --bundle validates one, and every
        logged change is replayed onto it first: a bundle any sidecar would refuse is never published.
        Publishing the bundle the store already holds writes nothing. `admit` (see StoreConfig.admit)
        compares the state the store holds with the one this bundle makes; a refusal raises NotAdmitted."""
        digest, docs = read_bundle(directory)
        bulk = CompileHook(self.compiler, EAGER_COMPILE_PER_LOAD)
        with compiling(bulk):
            base = apply_documents(docs)
        wrote: list[bool] = [False]
        with self._write_lock:
            def build(entries: list[Entry]) -> list[Record]:
                records = self._records + entries
                found = _published(records)
                if found is not None and found[1] == digest:
                    return []
                # Raises ReplayError naming a change that would not apply to the new bundle.
                new_state, retire = self._replay(base, records, bulk)
                if admit is not None:
                    with compiling(bulk):
                        old_base = apply_documents(self._documents(found[0], records)) if found else IamState()
                    why = admission(admit, self._replay(old_base, records, bulk)[0], new_state)
                    if why:
                        raise NotAdmitted(why)
                out: list[Record] = [{"op": LOAD_BUNDLE, "digest": digest, "documents": [list(d) for d in docs]}]
                if retire:
                    out.append({"op": RETIRE_OPS, "digests": retire})
                return out

            seqs = self._log.write(self._head(), build)
        return (seqs[-1], True) if seqs else (self._log.head(), False)

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
                log.error("%s; still serving revision %d", self._last_error, self.revision)
                continue
            self.reload()


def _without_documents(record: Record) -> Record:
    """A record as the holder keeps it in memory: a published bundle's documents are read again when needed."""
    if record.get("op") == LOAD_BUNDLE and "documents" in record:
        return {k: v for k, v in record.items() if k != "documents"}
    return record
