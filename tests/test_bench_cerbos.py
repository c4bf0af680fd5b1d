"""The cerbos case (bench/cerbos.py): the policy translation, the CheckResources wire messages, the skip without
npm or registry, and a tiny side-by-side run (skipped when Cerbos cannot be installed here)."""

from __future__ import annotations

import math
import stat
from pathlib import Path

import pytest

from bench import cerbos
from bench.targets import Unavailable


def test_translation_gives_each_policy_a_role_and_each_user_its_policies() -> None:
    t = cerbos.translate()
    rules = {r["name"]: r for r in t.policy["resourcePolicy"]["rules"]}
    assert t.policy["resourcePolicy"]["resource"] == cerbos.RESOURCE_KIND
    assert t.roles["arn:aws:iam::123456789012:user/viewer"] == ("KinesisVideoReadOnly",)   # through its group
    assert t.roles["arn:aws:iam::123456789012:user/camera"] == ("KinesisVideoCameraWriter",)
    # Describe*/Get*/List* are expanded over the catalogue; kinesisvideo:* stays a Cerbos wildcard.
    read = rules["KinesisVideoReadOnly-0"]["actions"]
    assert "kinesisvideo:DescribeStream" in read and "kinesisvideo:ListStreams" in read
    assert "kinesisvideo:PutMedia" not in read and "kinesisvideo:ConnectAsViewer" not in read
    assert all(a.split(":")[1].startswith(("Describe", "Get", "List")) for a in read)
    assert rules["KinesisVideoFullAccess-0"]["actions"] == ["kinesisvideo:*"]
    # One stream's ARN: an equality on the resource id; a trailing * a prefix.
    assert rules["KinesisVideoWriteYourStream-0"]["condition"]["match"]["expr"] == (
        'request.resource.id == "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"')
    assert "startsWith" in rules["SharedStreamWriter-0"]["condition"]["match"]["expr"]
    assert any("PartnerStreamWriter" in u for u in t.untranslated)


def test_translation_refuses_what_it_cannot_translate_exactly(tmp_path: Path) -> None:
    bundle = tmp_path / "a.yaml"
    bundle.write_text("""
account: "123456789012"
policies:
  - name: NoDelete
    document:
      Version: "2012-10-17"
      Statement:
        - {Effect: Deny, Action: "kinesisvideo:DeleteStream", Resource: "*"}
users: []
""")
    with pytest.raises(ValueError, match="only unconditioned Allow statements"):
        cerbos.translate(bundle)


def test_check_resources_request_uses_cerbos_field_numbers() -> None:
    raw = cerbos.check_request("p", ["r"], "arn:x", ["kinesisvideo:PutMedia"])
    # principal = 3 {id = 1, roles = 3}, resources = 4 {actions = 1, resource = 2 {kind = 1, id = 3}}
    assert raw.startswith(b"\x1a\x06\n\x01p\x1a\x01r\x22")
    assert b"\n\x15kinesisvideo:PutMedia\x12\x15\n\x0ckinesisvideo\x1a\x05arn:x" in raw


def test_effects_reads_the_action_map_of_a_response() -> None:
    _, response_cls = cerbos.messages()
    resp = response_cls()
    entry = resp.results.add()
    entry.resource.id = "arn:x"
    entry.actions["kinesisvideo:PutMedia"] = cerbos.EFFECT_ALLOW
    entry.actions["kinesisvideo:GetMedia"] = 2          # EFFECT_DENY
    assert cerbos.effects(resp.SerializeToString()) == {"kinesisvideo:PutMedia": True, "kinesisvideo:GetMedia": False}


def _failing_npm(tmp_path: Path) -> str:
    npm = tmp_path / "npm"
    npm.write_text("#!/bin/sh\necho 'npm error code ENOTFOUND' >&2\necho 'npm error network request failed' >&2\n"
                   "exit 1\n")
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    return str(npm)


def test_without_a_registry_the_case_is_skipped_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="failed \\(exit 1\\): npm error code ENOTFOUND"):
        cerbos.install(tmp_path / "cache", _failing_npm(tmp_path))
    lines: list[str] = []
    out = cerbos.case(cerbos.CerbosPlan(cache_dir=tmp_path / "cache", npm=_failing_npm(tmp_path)), lines.append)
    assert "ENOTFOUND" in out["skipped"] and lines == [f"cerbos: skipped: {out['skipped']}"]


def test_without_npm_the_case_is_skipped(tmp_path: Path) -> None:
    out = cerbos.case(cerbos.CerbosPlan(cache_dir=tmp_path, npm=str(tmp_path / "no-npm")), lambda _: None)
    assert out["skipped"].startswith("npm not found")


@pytest.mark.integration
def test_cerbos_and_the_sidecar_agree_and_are_measured_side_by_side() -> None:
    try:
        cerbos.install()
    except Unavailable as exc:
        pytest.skip(f"Cerbos cannot be installed here: {exc}")
    plan = cerbos.CerbosPlan(repeats=1, duration_s=0.2, warmup_s=0.0, requests=80, concurrency=4, open_rate=400.0)
    out = cerbos.case(plan, lambda _: None)
    assert out["version"] == cerbos.CERBOS_VERSION
    eq = out["equivalence"]
    assert eq["differ"] == [] and eq["asked"] == 4 * 5 * len(cerbos.catalogue()) and 0 < eq["allowed"] < eq["asked"]
    for name in (cerbos.SIDECAR, cerbos.CERBOS):
        fig = out[name]
        assert fig["errors"] == 0
        assert fig["decisions"].get("ALLOW", 0) > 0 and sum(fig["decisions"].values()) > fig["decisions"]["ALLOW"]
        # The kernel counts CPU time in ticks (10 ms): a run this short may show none.
        assert fig["cpu_ms_per_call"]["median"] >= 0
    figures = {"throughput_rps", "throughput_repeated_rps", "p50_us_at_1", "open_p99_us", "open_p999_us"}
    assert figures <= set(out["ratios"])
    # The sidecar answers repeats from its memo: all but the first of each of the 16 requests (64 of 80).
    assert out[cerbos.SIDECAR]["cached_fraction_repeated"] > 0.5
    assert all(math.isfinite(out["ratios"][k]) and out["ratios"][k] > 0 for k in ("throughput_rps", "p50_us_at_1"))


def test_the_plot_draws_every_ratio_and_nothing_for_a_skipped_case(tmp_path: Path) -> None:
    ratios = {key: 0.5 + i / 4 for i, (key, _, _) in enumerate(cerbos.PLOT_FIGURES)}
    case = {"ratios": ratios, "concurrency": 64, "open_rate": 1500.0, "version": cerbos.CERBOS_VERSION}
    png = cerbos.plot(case, tmp_path / "cerbos.png")
    assert png is not None and png.stat().st_size > 0
    assert cerbos.plot({"skipped": "npm not found"}, tmp_path / "none.png") is None
