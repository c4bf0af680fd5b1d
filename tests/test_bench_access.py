"""The access case of the benchmark (bench/access.py) on tiny bundles: the two bundles differ in exactly one
policy, every figure is measured on what it claims, and the harness reports it against the targets.

No timing is asserted: only that the queries find principals, that the diff finds exactly the access the changed
policy adds, and that results.json and results.md carry the case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import access
from bench.fixtures import policy_name
from bench.run import Plan, run

PRINCIPALS = 60
POOL = 20


def test_the_two_bundles_differ_in_one_policy(tmp_path: Path) -> None:
    old, new, attached = access.write_bundles(tmp_path, PRINCIPALS, POOL)
    before = json.loads(next(old.directory.glob("*.json")).read_text())
    after = json.loads(next(new.directory.glob("*.json")).read_text())
    k = access.changed_policy_index(POOL)
    assert [p for p in before["policies"] if p not in after["policies"]] == [before["policies"][k]]
    assert after["policies"][k]["document"]["Statement"][-1]["Action"] == access.NEW_ACTION
    assert {key: v for key, v in before.items() if key != "policies"} == \
        {key: v for key, v in after.items() if key != "policies"}
    assert attached == sum(1 for u in before["users"] if policy_name(k) in u["policies"]) > 0


def test_measure_finds_the_principals_and_exactly_the_new_access(tmp_path: Path) -> None:
    old, new, attached = access.write_bundles(tmp_path, PRINCIPALS, POOL)
    steps: list[dict[str, Any]] = []
    fig = access.measure(old.directory, new.directory, PRINCIPALS, repeats=2, emit=steps.append)
    # Each step is reported as it ends, both targets' first figures soonest: what a run over budget keeps.
    assert [s["step"] for s in steps] == ["load_old", "who_can", "load_new", "diff"] + \
        ["who_can"] * (len(access.QUERIES) - 1)
    cut = access.partial([json.dumps(s) for s in steps[:4]] + ['{"step": "who_c'])   # stopped mid-line
    assert cut["load_old_s"] == fig["load_old_s"] and cut["diff_first_s"] == fig["diff_first_s"]
    assert cut["queries"] == fig["queries"][:1] and cut["diff_added"] == fig["diff_added"]
    over = {"principals": PRINCIPALS, "over_budget_s": 1.0, "skipped": "over", "partial": cut}
    assert "**over the budget of 1 s**" in "\n".join(access.report_lines(over))
    by_query = {(q["action"], q["resource"]): q for q in fig["queries"]}
    assert set(by_query) == set(access.QUERIES)
    assert by_query[access.QUERIES[0]]["principals"] > 0                   # PutMedia on a cam stream: someone can
    assert by_query[(access.NEW_ACTION, access.QUERIES[-1][1])]["principals"] == 0   # before the change: nobody
    # The change gives the new action to every user of the changed policy, and takes nothing away.
    assert fig["diff_grants_new_access"] and fig["diff_added"] > 0 and fig["diff_removed"] == 0
    assert fig["diff_added_principals"] == attached
    assert fig["who_can_warm_s"]["n"] == 2 * len(access.QUERIES) and fig["diff_s"]["n"] == 2
    assert set(fig["met"]) == {"who_can", "diff"}
    text = "\n".join(access.report_lines({**fig, "policy_pool": POOL, "changed_policy_users": attached}))
    assert "## Access analysis" in text and f"< {access.WHO_CAN_TARGET_S:g}" in text
    assert f"< {access.DIFF_TARGET_S:g}" in text


def test_harness_runs_the_case_and_reports_it(tmp_path: Path) -> None:
    plan = Plan(cases=("access",), access=access.AccessPlan(principals=PRINCIPALS, pool=POOL, repeats=1,
                                                            budget_s=120.0),
                server=False, plots=False, out=tmp_path)
    run(plan)
    data = json.loads((tmp_path / "results.json").read_text())
    fig = data["cases"]["access"]
    assert "error" not in fig and "skipped" not in fig, fig
    assert fig["principals"] == PRINCIPALS and fig["policy_pool"] == POOL and fig["diff_added"] > 0
    assert data["settings"]["access"]["principals"] == PRINCIPALS
    assert "## Access analysis (issue 15: who-can and diff)" in (tmp_path / "results.md").read_text()
