"""The store: the current snapshot, decisions with their cache, admin writes, AssumeRole, reload and the bundle watcher.

Readers take the current snapshot reference and never lock; writers (admin calls, reloads)
serialise on one lock, build the new state off to the side, persist it, and swap one reference.
"""

from __future__ import annotations

import logging
import math
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from ..evaluate import DEFAULT_OPTIONS, Decision, EngineOptions, Result, decide
from ..policy import limits
from ..policy.errors import RequestError
from ..policy.model import PolicyType
from ..policy.principals import parse_requester
from ..policy.validate import ValidationReport, validate_document
from ..requests import check_context, check_target
from .bundle import BundleError, load_bundle, signature
from .cache import DecisionCache
from .errors import InvalidInput, NotFound, PermissionDenied, QuotaExceeded, StoreError
from .oplog import OpLog
from .snapshot import PolicyCompiler, ResolvedPrincipal, Snapshot, Unresolved, \
    caller_values
from .state import (EXTERNAL_ID, SESSION_NAME, IamState, ManagedPolicy, Principal, PrincipalGone, apply_op,
                    check_tags, compiling, op_digest, principal_of_arn, resource_arn, session_policy_name,
                    token_digest, transaction, validated_policy, with_generated_values)

log = logging.getLogger("authz.store")

DEFAULT_CACHE_SIZE = 100_000
# Documents one load (a bundle read and the replay of the op log) compiles as it validates them, at most:
# about 0.3-0.5 ms each, so this bounds what eager compilation adds to a load (docs/performance.md,
# "Parse once"); the rest, and any beyond the compiled-policy cache's room, compile on first use.
EAGER_COMPILE_PER_LOAD = 5_000
DEFAULT_WATCH_INTERVAL = 1.0
MAX_ACCESS_KEY_ID_CHARS = 128        # AuthorizeRequest.access_key_id (IAM: 16-128)


@dataclass(frozen=True)
class StoreConfig:
    bundle_dir: Path | None = None
    state_dir: Path | None = None
    cache_size: int = DEFAULT_CACHE_SIZE
    options: EngineOptions = DEFAULT_OPTIONS
    watch_interval: float = DEFAULT_WATCH_INTERVAL     # seconds between bundle checks; 0 disables watching
    partition: str = "aws"


@dataclass(frozen=True)
class Answer:
    """A decision with where it came from."""

    result: Result
    revision: int
    cached: bool
    principal_known: bool
    # While valid_from <= the store's clock < valid_until, the same request against the same revision
    # gets this answer: always, or only within the current second when the decision read aws:CurrentTime
    # or aws:EpochTime from the clock, and only until a role session ends. Callers that keep answers use it.
    valid_until: float = math.inf
    valid_from: float = -math.inf


class PreparedContext:
    """A caller's request context, checked against the request limits and normalised, with the keys the
    store derives removed. Immutable once built, so one can serve any number of requests that carry
    the same context (the gRPC servicer keeps them per distinct context)."""

    __slots__ = ("values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values: Mapping[str, Any] = values


@dataclass(frozen=True)
class SessionGrant:
    assumed_role_arn: str
    assumed_role_id: str
    expiration: float
    access_key_id: str
    secret_access_key: str
    session_token: str


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


def _unknown_principal(revision: int, principal: str) -> Answer:
    r = Result(Decision.IMPLICIT_DENY, (), (), "unknown_principal", "", {}, "NONE", False, (),
               (f"unknownPrincipal:{principal[:200]}",), frozenset())
    return Answer(r, revision, False, False)


def _unresolved(revision: int, why: Unresolved) -> Answer:
    """An implicit deny for a principal the store knows but will not decide for as asked."""
    r = Result(Decision.IMPLICIT_DENY, (), (), why.reason, "", {}, "NONE", False, (), (why.note,), frozenset())
    return Answer(r, revision, False, True, why.until)


def _checked_caller_values(context: Mapping[str, Any], trusted: Mapping[str, Any] | None) -> dict[str, Any]:
    check_context(context)
    return caller_values(context, trusted)


_CLOCK_KEYS = ("aws:currenttime", "aws:epochtime")   # the keys the store fills from its clock


def assume_role_context(context: Mapping[str, Any], session_name: str, tags: Mapping[str, str],
                        external_id: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """The context of an AssumeRole decision, as (the caller's keys, the keys derived from the request).

    The caller's keys lose aws:RequestTag/* and aws:TagKeys (authorize drops the store's derived keys,
    sts:* among them, in any letter case); every key AWS derives from the AssumeRole request is set
    from the request itself. sts:SourceIdentity and sts:TransitiveTagKeys are not supported and so
    are absent, as AWS leaves them when a request has none."""
    caller = {k: v for k, v in context.items()
              if not (k.lower().startswith("aws:requesttag/") or k.lower() == "aws:tagkeys")}
    derived: dict[str, Any] = {"sts:RoleSessionName": session_name}
    if external_id:
        derived["sts:ExternalId"] = external_id
    if tags:
        derived.update({f"aws:RequestTag/{k}": v for k, v in tags.items()})
        derived["aws:TagKeys"] = list(tags)
    return caller, derived


class _Compile:
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


def _token(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


class Store:
    def __init__(self, config: StoreConfig, *, clock: Callable[[], float] = time.time) -> None:
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
        self._stamp: tuple[int, str, str] = (-1, "", "")   # aws:CurrentTime/EpochTime of the current second

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
        bulk = _Compile(self.compiler, EAGER_COMPILE_PER_LOAD)
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

    def _replay(self, base: IamState, compile_hook: _Compile | None = None) -> IamState:
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
        hook = compile_hook or _Compile(self.compiler, EAGER_COMPILE_PER_LOAD)
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

    def status(self) -> StoreStatus:
        snap = self._snapshot
        return StoreStatus(snap.revision, self._ready, self._last_error, self._last_load, snap.state.counts(),
                           self.cache.stats(), self._reloads_ok, self._reloads_failed, self._replay_skipped)

    # ------------------------------------------------------------ decisions

    def prepare_context(self, context: Mapping[str, Any], trusted_context: Mapping[str, Any] | None = None
                        ) -> PreparedContext:
        """The caller's `context` checked and normalised once, for `authorize(..., prepared=...)`.

        Keys the store derives (principal and resource facts) are dropped from it. `trusted_context`
        comes from this process's own gateway mapping and may carry aws:ResourceTag/* for resources
        being created.
        """
        return PreparedContext(_checked_caller_values(context, trusted_context))

    def authorize(self, principal: str, action: str, resource: str, context: Mapping[str, Any] | None = None, *,
                  explain: bool = False, trusted_context: Mapping[str, Any] | None = None,
                  prepared: PreparedContext | None = None, access_key_id: str = "") -> Answer:
        """Decide one request against the current snapshot.

        The caller's context comes either as `context` (and `trusted_context`; see prepare_context)
        or already prepared. `access_key_id` names the credential the request was signed with, when
        the caller knows it: a role session is resolved through it (see Snapshot.resolve).
        """
        check_target(principal, action, resource)
        if not isinstance(access_key_id, str) or len(access_key_id) > MAX_ACCESS_KEY_ID_CHARS:
            raise RequestError("access_key_id", f"at most {MAX_ACCESS_KEY_ID_CHARS} characters (an access key id)")
        caller = prepared.values if prepared is not None else _checked_caller_values(context or {}, trusted_context)
        snap = self._snapshot
        now = self.clock()
        rp = snap.resolve(principal, now, access_key_id)
        if rp is None:
            return _unknown_principal(snap.revision, principal)
        if isinstance(rp, Unresolved):
            return _unresolved(snap.revision, rp)
        values = self._context(snap, rp, resource, caller, now)
        key = (snap.revision, rp.key, action.lower(), resource)
        result = None if explain else self.cache.get(key, values)
        cached = result is not None
        if result is None:
            result = self._decide(snap, principal, rp, action, resource, values, explain)
            if not explain:
                self.cache.put(key, values, result)
        since, until = -math.inf, math.inf
        read = result.keys_read
        for k in _CLOCK_KEYS:
            if k in read and k not in caller:
                since, until = float(int(now)), float(int(now) + 1)   # the clock's values hold for this second
        return Answer(result, snap.revision, cached, True, min(until, rp.expires), since)

    def _context(self, snap: Snapshot, rp: ResolvedPrincipal, resource: str, caller: Mapping[str, Any],
                 now: float) -> dict[str, Any]:
        values = dict(caller)
        if "aws:currenttime" not in values or "aws:epochtime" not in values:
            second = int(now)
            stamp = self._stamp
            if stamp[0] != second:
                stamp = self._stamp = (second, datetime.fromtimestamp(second, tz=timezone.utc).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"), str(second))
            values.setdefault("aws:currenttime", stamp[1])
            values.setdefault("aws:epochtime", stamp[2])
        values.update(rp.context)
        if resource != "*":
            f = resource.split(":", 5)
            if len(f) == 6 and f[4]:
                values["aws:resourceaccount"] = f[4]
                owner = snap.state.accounts.get(f[4])
                if owner is not None and owner.org_id:
                    values["aws:resourceorgid"] = owner.org_id
                    values["aws:resourceorgpaths"] = owner.org_paths
            res = snap.resource(resource)
            if res is not None:
                for k, v in res.tags:
                    values[f"aws:resourcetag/{k.lower()}"] = v
        return values

    def _decide(self, snap: Snapshot, principal: str, rp: ResolvedPrincipal, action: str, resource: str,
                values: dict[str, Any], explain: bool) -> Result:
        if resource == "*":
            res_account = rp.account
        else:
            f = resource.split(":", 5)
            res_account = f[4] if len(f) == 6 else ""
        rkey, rpol = snap.resource_policy(resource)
        cps = snap.policy_set(principal, rp, rkey, rpol, res_account)
        return decide(cps, rp.requester, action, resource, res_account, values, explain=explain,
                      options=self.config.options)

    # ------------------------------------------------------------ AssumeRole

    def assume_role(self, caller: str, role_arn: str, session_name: str, duration_seconds: int = 0,
                    session_policy: str | None = None, tags: Mapping[str, str] | None = None,
                    context: Mapping[str, Any] | None = None, external_id: str = "") -> SessionGrant:
        """STS AssumeRole: allowed only when the role's trust policy and the caller's own policies
        allow sts:AssumeRole as AWS decides (spec 3.6); passing tags also needs sts:TagSession.

        Every key AWS derives from the AssumeRole request comes from this call's arguments, never from
        the caller's `context` (whose copies are dropped): sts:RoleSessionName, sts:ExternalId,
        aws:RequestTag/* and aws:TagKeys (see assume_role_context).
        """
        tags = dict(tags or {})
        if not isinstance(session_name, str) or not SESSION_NAME.fullmatch(session_name):
            raise InvalidInput(f"session_name: {limits.MIN_SESSION_NAME}-{limits.MAX_SESSION_NAME} characters of "
                               "letters, digits and +=,.@_-", "session_name")
        if external_id and not EXTERNAL_ID.fullmatch(external_id):
            raise InvalidInput("external_id: 2-1224 characters of letters, digits and +=,.@:/_-", "external_id")
        check_tags(tags, "tags", limits.MAX_SESSION_TAGS)
        reserved = [k for k in tags if k.lower().startswith("aws:")]
        if reserved:
            raise InvalidInput(f"tags: session tag keys cannot start with aws: (reserved for AWS); got {reserved[0]!r}",
                               "tags")
        parsed_policy = None
        if session_policy:
            session_policy, parsed_policy = validated_policy(session_policy, PolicyType.SESSION, "session_policy")
        snap = self._snapshot
        role = principal_of_arn(snap.state, "role", role_arn)
        denied = PermissionDenied(f"{caller} is not authorized to perform sts:AssumeRole on resource {role_arn}",
                                  "role_arn")
        if role is None:
            raise denied   # as IAM does: a missing role looks like a refused one
        if parse_requester(caller).kind == "root":
            raise PermissionDenied(f"{caller} is an account root: roles cannot be assumed by root (as AWS refuses "
                                   "it); call as an IAM user or role session", "caller")
        chained = caller.startswith("arn:aws:sts::") and ":assumed-role/" in caller
        max_duration = 3600 if chained else role.max_session
        duration = duration_seconds or limits.DEFAULT_SESSION_SECONDS
        if not limits.MIN_SESSION_SECONDS <= duration <= max_duration:
            raise InvalidInput(f"duration_seconds must be {limits.MIN_SESSION_SECONDS}-{max_duration} for this role"
                               f"{' (role chaining caps sessions at 1 hour)' if chained else ''}; got {duration}",
                               "duration_seconds")
        ctx, derived = assume_role_context(context or {}, session_name, tags, external_id)
        answer = self.authorize(caller, "sts:AssumeRole", role_arn, ctx, trusted_context=derived)
        if not answer.result.allowed:
            raise denied
        if tags and not self.authorize(caller, "sts:TagSession", role_arn, ctx,
                                       trusted_context=derived).result.allowed:
            raise PermissionDenied(f"{caller} is not authorized to perform sts:TagSession on resource "
                                   f"{role_arn}; session tags need it in the trust policy", "tags")
        now = self.clock()
        session_arn = f"arn:aws:sts::{role.account}:assumed-role/{role.name}/{session_name}"
        key_id = "ASIA" + _token(string.ascii_uppercase + string.digits, 16)
        secret = _token(string.ascii_letters + string.digits + "+/", 40)
        token = _token(string.ascii_letters + string.digits, 96)
        op = {"op": "CreateSession", "arn": session_arn, "role_arn": role.arn, "role_id": role.unique_id,
              "session_name": session_name, "issued": now, "expires": now + duration, "policy": session_policy or None,
              "tags": tags, "access_key_id": key_id, "secret": secret,
              "session_token_sha256": token_digest(token).hex(), "source": caller}
        if session_policy:
            _Compile(self.compiler)(session_policy_name(session_arn), session_policy, parsed_policy)
        self._commit(op)
        return SessionGrant(session_arn, f"{role.unique_id}:{session_name}", now + duration, key_id, secret, token)

    def revoke_sessions(self, account: str, role: str) -> float:
        """IAM's "revoke active sessions": every session of the role issued before now is refused from now
        on (an implicit deny saying so); sessions issued afterwards are not affected. Returns the time."""
        at = self.clock()
        self._commit({"op": "RevokeSessions", "account": account, "name": role, "at": at})
        return at

    # ------------------------------------------------------------ admin writes

    def _commit(self, op: dict[str, Any]) -> IamState:
        """Apply, persist, publish: all or nothing. The op is logged with the unique ids it creates and
        of the principals it addresses (state.with_generated_values), so that its replay is exact."""
        with self._write_lock, compiling(_Compile(self.compiler)):
            op = with_generated_values(self._state, op)
            state = apply_op(self._state, op)
            if self._oplog is not None:
                self._oplog.append(op)
            self._ops.append(op)
            self._swap(state)
            return state

    def apply(self, op: dict[str, Any]) -> IamState:
        """Apply one admin op (see state.py for the op names and their fields)."""
        return self._commit(op)

    def create_policy(self, account: str, name: str, document: str, path: str = "/", description: str = ""
                      ) -> ManagedPolicy:
        state = self._commit({"op": "CreatePolicy", "account": account, "name": name, "path": path or "/",
                              "document": document, "description": description})
        return next(p for p in state.policies.values() if p.name == name and p.arn.split(":")[4] == account
                    and p.path == (path or "/"))

    def create_access_key(self, account: str, user: str) -> tuple[str, str, str]:
        kid = "AKIA" + _token(string.ascii_uppercase + string.digits, 16)
        secret = _token(string.ascii_letters + string.digits + "+/", 40)
        state = self._commit({"op": "CreateAccessKey", "account": account, "user": user, "id": kid,
                              "secret": secret})
        return kid, secret, state.access_keys[kid].principal

    def update_access_key(self, access_key_id: str, status: str) -> None:
        """IAM's UpdateAccessKey: Active or Inactive (an Inactive key fails SigV4 verification)."""
        self._commit({"op": "UpdateAccessKey", "id": access_key_id, "status": status})

    def create_principal(self, kind: str, account: str, name: str, **fields: Any) -> Principal:
        """CreateUser/CreateGroup/CreateRole: the principal gets a fresh random unique id, carried in the op."""
        self._commit({"op": "CreatePrincipal", "kind": kind, "account": account, "name": name, **fields})
        return self.principal(account, kind, name)

    def register_resource(self, account: str, region: str, rtype: str, name: str, arn: str = "",
                          tags: Mapping[str, str] | None = None, policy: str | None = None) -> str:
        if not arn:
            arn = resource_arn(self.config.partition, region, account, rtype, name, int(self.clock() * 1000))
        self._commit({"op": "RegisterResource", "type": rtype, "arn": arn, "tags": dict(tags or {}),
                      "policy": policy or None})
        return arn

    def policy(self, arn: str) -> ManagedPolicy:
        pol = self._snapshot.state.policies.get(arn)
        if pol is None:
            raise NotFound(f"policy {arn!r} does not exist", "arn")
        return pol

    def principal(self, account: str, kind: str, name: str) -> Principal:
        acct = self._snapshot.state.accounts.get(account)
        if acct is None or kind not in ("user", "group", "role"):
            raise NotFound(f"{kind} {name!r} does not exist in account {account}", "name")
        p = acct.table(kind).get(name.lower())
        if p is None or p.name != name:
            raise NotFound(f"{kind} {name!r} does not exist in account {account}", "name")
        return p

    def attachment_count(self, arn: str) -> int:
        n = 0
        for acct in self._snapshot.state.accounts.values():
            for table in (acct.users, acct.groups, acct.roles):
                n += sum(1 for p in table.values() if arn in p.attached)
        return n

    @staticmethod
    def validate_policy(policy_type: str, document: str) -> ValidationReport:
        try:
            ptype = PolicyType.parse(policy_type or "identity")
        except ValueError as exc:
            raise InvalidInput(str(exc), "policy_type") from None
        return validate_document(document, ptype)


__all__ = ["Store", "StoreConfig", "Answer", "SessionGrant", "StoreStatus", "StoreError", "QuotaExceeded"]
