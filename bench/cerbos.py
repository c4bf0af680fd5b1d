"""The cerbos case: Cerbos (a Go policy decision point, from npm) next to the sidecar, same policy, same load generator.

Cerbos is installed from the npm package CERBOS_PACKAGE at CERBOS_VERSION into a cache directory (never
globally). The policy is translated from the example bundle (examples/bundle): each customer managed
policy becomes a role of one Cerbos resource policy, each Allow statement a rule for that role, and each
user's roles are the policies attached to it directly or through its groups (the Cerbos caller supplies
them; the sidecar looks them up in its bundle). Before any load, every action of the Kinesis Video
Streams catalogue is asked of both servers for every example user on the example streams, the channel
and an unknown stream: a single differing decision stops the case, since figures of two policies that
disagree compare nothing.

CheckResources requests are built with protobuf's dynamic descriptors from a wire-compatible subset of
Cerbos's request and response messages (the same field numbers; the fields the case does not send are
left out), so the load generator sends raw bytes to both servers alike.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import psutil
import yaml

from .fixtures import MARKER
from .loadgen import LoadClient, LoadResult, LoadSpec
from .stats import ratio, spread
from .targets import REPO, ServedProcess, Unavailable, free_port, start_server

CERBOS_PACKAGE = "@cerbos/cerbos-linux-x64"
CERBOS_VERSION = "0.55.0"
CERBOS_BINARY = "cerbos-linux-x64"            # the executable inside the package
DEFAULT_CACHE = REPO / "bench" / "results" / "cache"   # git-ignored, kept between runs
NPM_TIMEOUT_S = 180.0                         # an unreachable registry fails well within this
CHECK_RESOURCES = "/cerbos.svc.v1.CerbosService/CheckResources"
EXAMPLE_BUNDLE = REPO / "examples" / "bundle"
EXAMPLE_ACCOUNT_FILE = "123456789012.yaml"
ACTION_CATALOGUE = REPO / "authz" / "policy" / "data" / "actions.json"
SERVICE = "kinesisvideo"
RESOURCE_KIND = "kinesisvideo"                # one Cerbos resource kind for streams and channels
CREATION = "1612345678901"                    # creation suffix of the load's resource ARNs (no run of ten zeros)
EFFECT_ALLOW = 1                              # cerbos.effect.v1.Effect
CPU_RUN_S = 0.0                               # the CPU-per-call runs have no warm-up of their own (see measure)
SIDECAR, CERBOS = "sidecar", "cerbos"


# ------------------------------------------------------------------ install

def install(cache_dir: Path = DEFAULT_CACHE, npm: str | None = None) -> Path:
    """The Cerbos binary of CERBOS_PACKAGE@CERBOS_VERSION, installed with npm into `cache_dir` (reused when
    there). Raises Unavailable saying why when it cannot be had (no npm, another platform, no registry)."""
    prefix = cache_dir / f"cerbos-{CERBOS_VERSION}"
    binary = prefix / "node_modules" / CERBOS_PACKAGE / CERBOS_BINARY
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"{CERBOS_PACKAGE} is built for Linux x86-64, not {platform.system()} {platform.machine()}")
    npm = npm or shutil.which("npm")
    if not npm or not os.access(npm, os.X_OK):
        raise Unavailable(f"npm not found{f' at {npm}' if npm else ''}: install Node.js's npm to fetch Cerbos "
                          "from the npm registry")
    prefix.mkdir(parents=True, exist_ok=True)
    argv = [npm, "install", "--prefix", str(prefix), "--no-save", "--no-audit", "--no-fund", "--no-package-lock",
            "--fetch-retries", "0", "--fetch-timeout", "30000", f"{CERBOS_PACKAGE}@{CERBOS_VERSION}"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, cwd=prefix)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"npm install {CERBOS_PACKAGE}@{CERBOS_VERSION} did not finish within "
                          f"{NPM_TIMEOUT_S:.0f} s (is the npm registry reachable?)") from None
    if proc.returncode != 0 or not binary.is_file():
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise Unavailable(f"npm install {CERBOS_PACKAGE}@{CERBOS_VERSION} failed (exit {proc.returncode}): {tail}")
    binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()[0].strip() if out else ""


# ------------------------------------------------------------------ the policy, translated

@dataclass(frozen=True)
class Translation:
    """The example bundle as Cerbos sees it: one resource policy, and the roles each user's requests carry."""

    policy: dict[str, Any]
    roles: dict[str, tuple[str, ...]]        # user ARN -> Cerbos roles (the user's policies)
    actions: tuple[str, ...]                 # the catalogue, service-prefixed
    untranslated: tuple[str, ...]            # what the example bundle has that the translation leaves out


def catalogue() -> tuple[str, ...]:
    """Every Kinesis Video Streams action the project knows (authz/policy/data/actions.json), prefixed."""
    data = json.loads(ACTION_CATALOGUE.read_text())
    return tuple(f"{SERVICE}:{name}" for name in sorted(data["services"][SERVICE]["actions"]))


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _actions(patterns: Iterable[str], known: Sequence[str]) -> list[str]:
    """IAM action patterns as Cerbos actions: `service:*` stays a wildcard (Cerbos matches `:`-separated
    segments); any other wildcard is expanded over the catalogue (Cerbos cannot match `Describe*`)."""
    out: list[str] = []
    for p in patterns:
        if p == "*" or p.lower() == f"{SERVICE}:*":
            out.append(f"{SERVICE}:*")
        elif "*" in p or "?" in p:
            out += [a for a in known if fnmatch.fnmatchcase(a.lower(), p.lower())]
        else:
            out.append(next((a for a in known if a.lower() == p.lower()), p))
    return sorted(set(out))


def _condition(resources: list[str]) -> dict[str, Any] | None:
    """A CEL condition on the resource's id (its ARN) equivalent to the statement's Resource list."""
    if "*" in resources:
        return None
    exprs = []
    for r in resources:
        if "?" in r or "*" in r[:-1]:
            raise ValueError(f"resource pattern {r!r} has a wildcard the translation does not cover")
        exprs.append(f'request.resource.id.startsWith({json.dumps(r[:-1])})' if r.endswith("*")
                     else f"request.resource.id == {json.dumps(r)}")
    return {"match": {"expr": exprs[0]} if len(exprs) == 1 else {"any": {"of": [{"expr": e} for e in exprs]}}}


def translate(bundle_file: Path = EXAMPLE_BUNDLE / EXAMPLE_ACCOUNT_FILE) -> Translation:
    """The Cerbos equivalent of an account file whose policies are unconditioned Allow statements.

    Raises ValueError for any statement it cannot translate exactly (a Deny, a Condition, NotAction,
    NotResource): a partial translation would benchmark a different policy.
    """
    doc = yaml.safe_load(bundle_file.read_text())
    account, known = str(doc["account"]), catalogue()
    rules: list[dict[str, Any]] = []
    for pol in doc.get("policies", []):
        for i, st in enumerate(_listed(pol["document"]["Statement"])):
            unknown = set(st) - {"Sid", "Effect", "Action", "Resource"}
            if st.get("Effect") != "Allow" or unknown:
                raise ValueError(f"policy {pol['name']} statement {i}: only unconditioned Allow statements with "
                                 f"Action and Resource translate, not {st.get('Effect')} with {sorted(unknown)}")
            rule: dict[str, Any] = {"name": f"{pol['name']}-{i}", "actions": _actions(_listed(st["Action"]), known),
                                    "effect": "EFFECT_ALLOW", "roles": [pol["name"]]}
            cond = _condition([str(r) for r in _listed(st["Resource"])])
            if cond is not None:
                rule["condition"] = cond
            rules.append(rule)
    group_policies = {g["name"]: list(g.get("policies", [])) for g in doc.get("groups", [])}
    roles: dict[str, tuple[str, ...]] = {}
    for u in doc.get("users", []):
        names = list(u.get("policies", [])) + [p for g in u.get("groups", []) for p in group_policies[g]]
        if u.get("inline") or u.get("boundary"):
            raise ValueError(f"user {u['name']}: inline policies and boundaries are not translated")
        roles[f"arn:aws:iam::{account}:user/{u['name']}"] = tuple(sorted(set(names)))
    untranslated = tuple(f"role {r['name']} (an assumed-role session needs AssumeRole first)"
                         for r in doc.get("roles", []))
    policy = {"apiVersion": "api.cerbos.dev/v1",
              "resourcePolicy": {"version": "default", "resource": RESOURCE_KIND, "rules": rules}}
    return Translation(policy, roles, known, untranslated)


# ------------------------------------------------------------------ CheckResources on the wire

@lru_cache(maxsize=1)
def messages() -> tuple[Any, Any]:
    """(CheckResourcesRequest, CheckResourcesResponse) classes from a wire-compatible subset of Cerbos's
    cerbos.request.v1 / cerbos.response.v1 / cerbos.engine.v1 messages, built with dynamic descriptors."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="bench/cerbos_wire.proto", package="bench.cerbos_wire",
                                            syntax="proto3")

    def msg(name: str, *fields: tuple[str, int, int, int, str], parent: Any = None) -> Any:
        m = (parent.nested_type if parent is not None else fd.message_type).add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
        return m

    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    s, b, i32, m_ = f.TYPE_STRING, f.TYPE_BOOL, f.TYPE_INT32, f.TYPE_MESSAGE
    pkg = ".bench.cerbos_wire."
    msg("Principal", ("id", 1, s, one, ""), ("policy_version", 2, s, one, ""), ("roles", 3, s, many, ""))
    msg("Resource", ("kind", 1, s, one, ""), ("policy_version", 2, s, one, ""), ("id", 3, s, one, ""))
    req = msg("CheckResourcesRequest", ("request_id", 1, s, one, ""), ("include_meta", 2, b, one, ""),
              ("principal", 3, m_, one, pkg + "Principal"),
              ("resources", 4, m_, many, pkg + "CheckResourcesRequest.ResourceEntry"))
    msg("ResourceEntry", ("actions", 1, s, many, ""), ("resource", 2, m_, one, pkg + "Resource"), parent=req)
    resp = msg("CheckResourcesResponse", ("request_id", 1, s, one, ""),
               ("results", 2, m_, many, pkg + "CheckResourcesResponse.ResultEntry"), ("cerbos_call_id", 3, s, one, ""))
    entry = msg("ResultEntry", ("resource", 1, m_, one, pkg + "CheckResourcesResponse.ResultEntry.Resource"),
                ("actions", 2, m_, many, pkg + "CheckResourcesResponse.ResultEntry.ActionsEntry"), parent=resp)
    msg("Resource", ("id", 1, s, one, ""), ("kind", 2, s, one, ""), ("policy_version", 3, s, one, ""),
        ("scope", 4, s, one, ""), parent=entry)
    actions_entry = msg("ActionsEntry", ("key", 1, s, one, ""), ("value", 2, i32, one, ""), parent=entry)
    actions_entry.options.map_entry = True          # map<string, cerbos.effect.v1.Effect>: an enum is an int32
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.cerbos_wire.CheckResourcesRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.cerbos_wire.CheckResourcesResponse")))


def check_request(principal: str, roles: Sequence[str], resource: str, actions: Sequence[str]) -> bytes:
    request_cls, _ = messages()
    msg = request_cls()
    msg.principal.id = principal
    msg.principal.roles.extend(roles)
    entry = msg.resources.add()
    entry.actions.extend(actions)
    entry.resource.kind = RESOURCE_KIND
    entry.resource.id = resource
    return bytes(msg.SerializeToString(deterministic=True))


def effects(raw: bytes) -> dict[str, bool]:
    """action -> allowed, from an encoded CheckResourcesResponse of one resource."""
    _, response_cls = messages()
    resp = response_cls.FromString(raw)
    return {a: e == EFFECT_ALLOW for r in resp.results for a, e in r.actions.items()}


def authorize_request(principal: str, action: str, resource: str) -> bytes:
    from authz.v1 import authz_pb2
    return bytes(authz_pb2.AuthorizeRequest(principal=principal, action=action, resource=resource)
                 .SerializeToString(deterministic=True))


# ------------------------------------------------------------------ the servers

def write_policies(translation: Translation, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{RESOURCE_KIND}.yaml").write_text(yaml.safe_dump(translation.policy, sort_keys=False))
    return directory


def start_cerbos(binary: Path, policy_dir: Path, work: Path, host: str = "127.0.0.1") -> ServedProcess:
    """Cerbos's server on a free gRPC port (HTTP on another), disk store without watching, no audit, no
    telemetry; SERVING through its gRPC health service."""
    grpc_address, http_address = f"{host}:{free_port(host)}", f"{host}:{free_port(host)}"
    config = {"server": {"grpcListenAddr": grpc_address, "httpListenAddr": http_address},
              "storage": {"driver": "disk", "disk": {"directory": str(policy_dir), "watchForChanges": False}},
              "audit": {"enabled": False}, "telemetry": {"disabled": True}}
    config_file = work / "cerbos.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "CERBOS_NO_TELEMETRY": "1"}
    return ServedProcess("cerbos", [str(binary), "server", f"--config={config_file}", "--log-level=error"],
                         grpc_address, env=env)


# ------------------------------------------------------------------ equivalence

def equivalence(translation: Translation, sidecar: str, cerbos: str) -> dict[str, Any]:
    """Ask both servers every catalogue action for every user on every example resource and an unknown
    stream; the decisions that differ (none, or the case stops)."""
    import grpc

    resources = [f"arn:aws:kinesisvideo:us-west-2:123456789012:{kind}/{name}/{suffix}" for kind, name, suffix in (
        ("stream", "your_stream", "0123456789012"), ("stream", "other_stream", "0123456789013"),
        ("stream", "shared_stream", "0123456789014"), ("channel", "your_channel", "0123456789015"),
        ("stream", "not-in-the-bundle", CREATION))]
    from authz.v1 import authz_pb2
    differ: list[dict[str, Any]] = []
    allowed = asked = 0
    with grpc.insecure_channel(sidecar) as s_ch, grpc.insecure_channel(cerbos) as c_ch:
        authorize = s_ch.unary_unary("/authz.v1.Authorizer/Authorize")
        check = c_ch.unary_unary(CHECK_RESOURCES)
        for principal, roles in translation.roles.items():
            for resource in resources:
                theirs = effects(check(check_request(principal, roles, resource, translation.actions), timeout=10))
                for action in translation.actions:
                    ours = authz_pb2.AuthorizeResponse.FromString(
                        authorize(authorize_request(principal, action, resource), timeout=10))
                    mine = ours.decision == authz_pb2.DECISION_ALLOW
                    asked += 1
                    allowed += mine
                    if mine != theirs.get(action, False):
                        differ.append({"principal": principal, "action": action, "resource": resource,
                                       "sidecar": mine, "cerbos": theirs.get(action)})
    return {"asked": asked, "allowed": allowed, "differ": differ}


# ------------------------------------------------------------------ the load

MIX = (("kinesisvideo:PutMedia", "stream"), ("kinesisvideo:GetMedia", "stream"),
       ("kinesisvideo:DescribeStream", "stream"), ("kinesisvideo:ConnectAsViewer", "channel"))


def payloads(translation: Translation, unique: bool = True) -> dict[str, tuple[bytes, ...]]:
    """The same requests for both servers, in the same order: every user x the mix. With `unique`, each names a
    resource with MARKER in its name (the load generator makes every request unique, so neither server can
    reuse an answer); without, the same 16 requests over and over, as a gateway asks them."""
    out: dict[str, list[bytes]] = {SIDECAR: [], CERBOS: []}
    name = f"cam-{MARKER.decode()}" if unique else "cam-front"
    for principal, roles in translation.roles.items():
        for action, kind in MIX:
            arn = f"arn:aws:kinesisvideo:us-west-2:123456789012:{kind}/{name}/{CREATION}"
            out[SIDECAR].append(authorize_request(principal, action, arn))
            out[CERBOS].append(check_request(principal, roles, arn, [action]))
    for name, ps in out.items():
        if unique and any(p.count(MARKER) != 1 for p in ps):
            raise AssertionError(f"every {name} payload must carry the counter marker exactly once")
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True)
class CerbosPlan:
    repeats: int = 3
    duration_s: float = 3.0
    warmup_s: float = 0.5
    requests: int | None = None
    concurrency: int = 64                  # the throughput and CPU figure
    open_rate: float = 1_500.0             # the open-loop figure: the same fixed rate for both
    cache_dir: Path = DEFAULT_CACHE
    npm: str | None = None                 # default: npm on PATH


def _cpu_s(pid: int) -> float:
    p = psutil.Process(pid)
    procs = [p, *p.children(recursive=True)]
    return sum(t.user + t.system for t in (q.cpu_times() for q in procs))


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return spread(values).as_dict()


def case(plan: CerbosPlan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Cerbos and the sidecar, same policy, same requests, alternating: throughput and server CPU per call at
    plan.concurrency, p50 at 1 in flight, open-loop p50/p99/p99.9 at plan.open_rate; {"skipped": why} when
    Cerbos cannot be installed here."""
    try:
        binary = install(plan.cache_dir, plan.npm)
    except Unavailable as exc:
        progress(f"cerbos: skipped: {exc}")
        return {"skipped": str(exc)}
    translation = translate()
    out: dict[str, Any] = {"package": f"{CERBOS_PACKAGE}@{CERBOS_VERSION}", "version": version(binary),
                           "untranslated": list(translation.untranslated), "roles": dict(translation.roles),
                           "rules": len(translation.policy["resourcePolicy"]["rules"])}
    load = payloads(translation)
    repeated = payloads(translation, unique=False)
    out["payload_bytes"] = {name: sum(map(len, ps)) / len(ps) for name, ps in load.items()}
    with tempfile.TemporaryDirectory(prefix="bench-cerbos-") as tmp, LoadClient() as client:
        work = Path(tmp)
        started: dict[str, ServedProcess] = {}
        try:
            started[CERBOS] = start_cerbos(binary, write_policies(translation, work / "policies"), work)
            started[SIDECAR] = start_server(EXAMPLE_BUNDLE, work / "state")
            progress(f"cerbos: {out['version']} SERVING on {started[CERBOS].address} after "
                     f"{started[CERBOS].ready_s:.1f} s; the sidecar on {started[SIDECAR].address}")
            eq = equivalence(translation, started[SIDECAR].address, started[CERBOS].address)
            out["equivalence"] = eq
            progress(f"cerbos: equivalence: {eq['asked']} decisions asked of both ({eq['allowed']} allowed), "
                     f"{len(eq['differ'])} differ")
            if eq["differ"]:
                raise RuntimeError(f"Cerbos and the sidecar disagree on {len(eq['differ'])} of {eq['asked']} "
                                   f"decisions (first: {eq['differ'][0]}): the translated policy is not equivalent")
            out.update(_measure(plan, client, started, load, repeated, progress))
        finally:
            for proc in started.values():
                proc.stop()
    return out


def _measure(plan: CerbosPlan, client: LoadClient, started: Mapping[str, ServedProcess],
             load: Mapping[str, tuple[bytes, ...]], repeated: Mapping[str, tuple[bytes, ...]],
             progress: Callable[[str], None]) -> dict[str, Any]:
    counter = 0
    methods = {SIDECAR: "Authorize", CERBOS: "CheckResources"}

    def run(name: str, label: str, unique: bool = True, **kw: Any) -> tuple[LoadResult, float]:
        nonlocal counter
        spec = LoadSpec(started[name].address, (load if unique else repeated)[name], method=methods[name],
                        duration_s=plan.duration_s, warmup_s=plan.warmup_s, requests=plan.requests, unique=unique,
                        counter_start=counter)
        spec = replace(spec, **kw)
        cpu0 = _cpu_s(started[name].pid)
        r = client.run(spec)
        cpu = _cpu_s(started[name].pid) - cpu0
        counter = max(counter, r.next_counter)
        progress(f"cerbos {label} {name:<7}: {r.throughput:,.0f} rps, p50 {r.percentile(50) / 1e3:.2f} ms, "
                 f"p99 {r.percentile(99) / 1e3:.2f} ms" + (f", {sum(r.errors.values())} errors" if r.errors else ""))
        return r, cpu

    for name in started:          # warm both (connections, lazily built state) before anything is recorded
        run(name, "warm-up", requests=None, duration_s=max(plan.warmup_s, 0.1), warmup_s=0.0)
    top: dict[str, list[LoadResult]] = {SIDECAR: [], CERBOS: []}
    cpu_ms: dict[str, list[float]] = {SIDECAR: [], CERBOS: []}
    one: dict[str, list[LoadResult]] = {SIDECAR: [], CERBOS: []}
    opened: dict[str, list[LoadResult]] = {SIDECAR: [], CERBOS: []}
    again: dict[str, list[LoadResult]] = {SIDECAR: [], CERBOS: []}
    for rep in range(plan.repeats):
        order = (SIDECAR, CERBOS) if rep % 2 == 0 else (CERBOS, SIDECAR)
        tag = f"[{rep + 1}/{plan.repeats}]"
        for name in order:
            # No warm-up inside this run: the CPU measured around it is all for the calls it counts.
            r, cpu = run(name, f"c={plan.concurrency} {tag}", concurrency=plan.concurrency, warmup_s=CPU_RUN_S)
            top[name].append(r)
            if r.ok:
                cpu_ms[name].append(cpu * 1e3 / (r.ok + sum(r.errors.values())))
        for name in order:
            one[name].append(run(name, f"c=1 {tag}", concurrency=1)[0])
        for name in order:
            opened[name].append(run(name, f"open {plan.open_rate:,.0f}/s {tag}", mode="open", rate=plan.open_rate)[0])
        for name in order:
            again[name].append(run(name, f"c={plan.concurrency} repeated {tag}", unique=False,
                                   concurrency=plan.concurrency)[0])
    figures: dict[str, dict[str, Any]] = {}
    for name in (SIDECAR, CERBOS):
        figures[name] = {
            "throughput_rps": _spread([r.throughput for r in top[name]]),
            "cpu_ms_per_call": _spread(cpu_ms[name]) if cpu_ms[name] else None,
            "p50_us_at_1": _spread([r.percentile(50) for r in one[name]]),
            "throughput_repeated_rps": _spread([r.throughput for r in again[name]]),
            "open_p50_us": _spread([r.percentile(50) for r in opened[name]]),
            "open_p99_us": _spread([r.percentile(99) for r in opened[name]]),
            "open_p999_us": _spread([r.percentile(99.9) for r in opened[name]]),
            "errors": sum(sum(r.errors.values()) for r in top[name] + one[name] + opened[name] + again[name]),
            "decisions": _tally(top[name] + one[name] + opened[name]),
            "cached_fraction_repeated": (sum(r.cached for r in again[name]) / a
                                         if (a := sum(r.answers for r in again[name])) else 0.0),
            "runs": {"closed_top": [r.summary() for r in top[name]], "closed_1": [r.summary() for r in one[name]],
                     "open": [r.summary() for r in opened[name]],
                     "closed_top_repeated": [r.summary() for r in again[name]]},
        }
    ratios = {key: ratio(figures[SIDECAR][key]["median"], figures[CERBOS][key]["median"])
              for key in ("throughput_rps", "throughput_repeated_rps", "p50_us_at_1", "open_p99_us", "open_p999_us")
              if figures[SIDECAR][key] and figures[CERBOS][key]}
    if figures[SIDECAR]["cpu_ms_per_call"] and figures[CERBOS]["cpu_ms_per_call"]:
        ratios["cpu_ms_per_call"] = ratio(figures[SIDECAR]["cpu_ms_per_call"]["median"],
                                          figures[CERBOS]["cpu_ms_per_call"]["median"])
    progress("cerbos: sidecar / Cerbos: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    return {"concurrency": plan.concurrency, "open_rate": plan.open_rate, SIDECAR: figures[SIDECAR],
            CERBOS: figures[CERBOS], "ratios": ratios,
            "cores": len(os.sched_getaffinity(0))}


def _tally(results: Sequence[LoadResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for k, v in r.decisions.items():
            out[k] = out.get(k, 0) + v
    return out


PLOT_FIGURES = (("throughput_rps", "throughput,\nunique", "higher"),
                ("throughput_repeated_rps", "throughput,\nrepeated", "higher"),
                ("cpu_ms_per_call", "server CPU\nper call", "lower"),
                ("p50_us_at_1", "p50 at 1\nin flight", "lower"),
                ("open_p99_us", "open loop\np99", "lower"),
                ("open_p999_us", "open loop\np99.9", "lower"))


def plot(c: Mapping[str, Any] | None, path: Path) -> Path | None:
    """cerbos_side_by_side.png: sidecar / Cerbos for each figure (log scale, 1 = level), green where the
    sidecar is better (higher throughput, lower cost or latency)."""
    if not isinstance(c, Mapping) or not c.get("ratios"):
        return None
    from .plots import _plain_log_axis, plt

    rows = [(label, c["ratios"][key], better) for key, label, better in PLOT_FIGURES
            if key in c["ratios"] and c["ratios"][key] == c["ratios"][key] and c["ratios"][key] > 0]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = ["tab:green" if (r > 1) == (better == "higher") else "tab:red" for _, r, better in rows]
    ax.set_yscale("log")
    ax.bar(range(len(rows)), [r - 1 for _, r, _ in rows], bottom=1.0, color=colors, alpha=0.8)   # from 1 to r
    for i, (_, r, _) in enumerate(rows):
        ax.annotate(f"{r:.2f}", (i, r), ha="center", va="bottom" if r >= 1 else "top", fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    span = max(max(r, 1 / r) for _, r, _ in rows) * 1.3
    ax.set_ylim(1 / span, span)
    _plain_log_axis(ax.yaxis)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([label for label, _, _ in rows], fontsize=8)
    ax.set_ylabel("sidecar / Cerbos (green: the sidecar is better)")
    ax.set_title(f"Side by side with Cerbos {c.get('version', '')}: same policy, same requests "
                 f"({c['concurrency']} in flight, open loop at {c['open_rate']:,.0f}/s)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
