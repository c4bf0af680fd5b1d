"""In-process engine micro-benchmark: microseconds per uncached decision, next to a dict-lookup floor."""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from authz.evaluate import CompiledPolicySet, PolicySet, Request, decide, evaluate
from authz.policy.conditions import normalise_context
from authz.policy.principals import parse_requester
from authz.policy import compile_policy

from .fixtures import engine_requests, identity_policy_document, policy_name
from .stats import Spread, ratio, spread

POLICY_COUNTS = (1, 10, 50)
TARGET_POLICIES = 10
TARGET_US = 5.0                 # the engine's goal: median us per uncached decision with 10 policies
SAMPLE_SECONDS = 0.02           # each sample times a loop this long, so timer resolution is irrelevant
FLOOR = "floor"


def compiled_policies(n: int) -> CompiledPolicySet:
    """The identity policies of one principal with n attached policies of five statements each."""
    policies = tuple(compile_policy(identity_policy_document(k), policy_name(k)) for k in range(n))
    return CompiledPolicySet(PolicySet(identity=policies))


def floor_call(table: Mapping[str, int], key: str) -> int:
    """The floor: one Python function call doing one dict lookup."""
    return table[key]


Loop = Callable[[int], int]   # runs `rounds` rounds and returns how many operations it did


def call_loop(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> Loop:
    """A loop making every call fn(*args) of `calls`, `rounds` times.

    Every case (engine, store, floor) is timed through this one loop, so the loop's own overhead
    is the same in all of them and cancels out of the ratios.
    """
    def run(rounds: int) -> int:
        f = fn
        for _ in range(rounds):
            for args in calls:
                f(*args)
        return rounds * len(calls)
    return run


def engine_loop(cps: CompiledPolicySet, requests: Sequence[Request]) -> Loop:
    """Decide every request of the mix; the StatementIndex memo stays warm, there is no decision cache."""
    return call_loop(evaluate, [(r, cps) for r in requests])


def prepared_loop(cps: CompiledPolicySet, requests: Sequence[Request]) -> Loop:
    """The same mix through `decide` with the requester and context prepared beforehand: what
    the store does, since it resolves a principal's facts once per snapshot."""
    prepared = [(parse_requester(r.principal, str(r.context.get("aws:userid", ""))), r.action, r.resource,
                 normalise_context(r.context)) for r in requests]

    def run(rounds: int) -> int:
        d = decide
        for _ in range(rounds):
            for who, action, resource, values in prepared:
                d(cps, who, action, resource, None, values)
        return rounds * len(prepared)
    return run


def floor_loop(size: int) -> Loop:
    """`size` calls of floor_call per round, through the same loop as engine_loop."""
    keys = [f"kinesisvideo:key{i}" for i in range(size)]
    table = {k: i for i, k in enumerate(keys)}
    return call_loop(floor_call, [(table, k) for k in keys])


def _calibrate(loop: Loop, seconds: float) -> int:
    """Rounds that make one sample last about `seconds`."""
    rounds = 1
    while True:
        t0 = time.perf_counter()
        loop(rounds)
        dt = time.perf_counter() - t0
        if dt >= seconds / 4:
            return max(1, round(rounds * seconds / dt))
        rounds *= 4


def interleaved_samples(loops: Mapping[str, Loop], samples: int,
                        sample_seconds: float = SAMPLE_SECONDS) -> dict[str, list[float]]:
    """Microseconds per operation, `samples` times per loop, taking the loops in turn.

    Taking the cases round-robin spreads the machine's noise over all of them alike, which
    keeps ratios between cases of the same run meaningful on a shared machine.
    """
    rounds = {name: _calibrate(loop, sample_seconds) for name, loop in loops.items()}
    out: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(samples):
        for name, loop in loops.items():
            gc.collect()
            t0 = time.perf_counter_ns()
            n = loop(rounds[name])
            out[name].append((time.perf_counter_ns() - t0) / 1_000 / n)
    return out


@dataclass(frozen=True)
class EngineFigures:
    """Uncached us/decision per attached-policy count, the floor, and the mix's decision tallies."""

    per_policies: dict[int, Spread]
    prepared: dict[int, Spread]         # the same decisions with the context prepared (the store's path)
    floor: Spread
    decisions: dict[int, dict[str, int]]
    requests: int
    samples: int

    def target_line(self) -> str:
        s = self.per_policies.get(TARGET_POLICIES)
        if s is None:
            return f"target: not measured ({TARGET_POLICIES} policies not in this run)"
        p = self.prepared[TARGET_POLICIES]
        verdict = "MET" if s.median <= TARGET_US else "MISSED"
        pverdict = "MET" if p.median <= TARGET_US else "MISSED"
        return (f"target ({TARGET_POLICIES} policies, median <= {TARGET_US:g} us): from a raw request {verdict} "
                f"({s.median:.2f} us, {s.median / TARGET_US:.1f}x); with the context prepared {pverdict} "
                f"({p.median:.2f} us, {p.median / TARGET_US:.1f}x)")

    def as_dict(self) -> dict[str, Any]:
        return {
            "uncached_us": {str(n): s.as_dict() for n, s in self.per_policies.items()},
            "uncached_prepared_us": {str(n): s.as_dict() for n, s in self.prepared.items()},
            "floor_us": self.floor.as_dict(),
            "ratio_to_floor": {str(n): ratio(s.median, self.floor.median) for n, s in self.per_policies.items()},
            "decisions": {str(n): d for n, d in self.decisions.items()},
            "requests_in_mix": self.requests,
            "samples": self.samples,
            "target": {"policies": TARGET_POLICIES, "median_us": TARGET_US,
                       "met": (s := self.per_policies.get(TARGET_POLICIES)) is not None and s.median <= TARGET_US,
                       "met_prepared": (p := self.prepared.get(TARGET_POLICIES)) is not None
                       and p.median <= TARGET_US},
        }


def measure(policy_counts: Sequence[int] = POLICY_COUNTS, samples: int = 40,
            sample_seconds: float = SAMPLE_SECONDS) -> EngineFigures:
    """Time uncached decisions for each policy count and the floor, interleaved, in this process."""
    requests = engine_requests()
    sets = {n: compiled_policies(n) for n in policy_counts}
    decisions = {n: dict(Counter(evaluate(r, cps).decision.value for r in requests)) for n, cps in sets.items()}
    loops: dict[str, Loop] = {str(n): engine_loop(cps, requests) for n, cps in sets.items()}
    loops.update({f"prepared{n}": prepared_loop(cps, requests) for n, cps in sets.items()})
    loops[FLOOR] = floor_loop(len(requests))
    raw = interleaved_samples(loops, samples, sample_seconds)
    return EngineFigures({n: spread(raw[str(n)]) for n in policy_counts},
                         {n: spread(raw[f"prepared{n}"]) for n in policy_counts}, spread(raw[FLOOR]), decisions,
                         len(requests), samples)


def report_lines(fig: EngineFigures) -> list[str]:
    """The human-readable report of `make bench-engine`."""
    lines = [f"engine: uncached decision, us per decision (median, p10/p90, IQR over {fig.samples} samples; "
             f"mix of {fig.requests} KVS requests)"]
    for n, s in fig.per_policies.items():
        tallies = ", ".join(f"{k} {v}" for k, v in sorted(fig.decisions[n].items()))
        p = fig.prepared[n]
        lines.append(f"  {n:>3} policies x 5 statements: {s.text('us')}  "
                     f"= {ratio(s.median, fig.floor.median):,.0f}x floor   [{tallies}]")
        lines.append(f"      with the context prepared: {p.text('us')}  = {ratio(p.median, fig.floor.median):,.0f}x "
                     "floor")
    lines.append(f"  floor (function call + dict lookup): {fig.floor.text('us', 3)}")
    lines.append(fig.target_line())
    return lines


def profile_lines(policies: int = TARGET_POLICIES, rounds: int = 200, top: int = 15) -> list[str]:
    """Where the time of an uncached decision goes (cProfile, sorted by own time)."""
    requests = engine_requests()
    loop = engine_loop(compiled_policies(policies), requests)
    prof = cProfile.Profile()
    prof.runcall(loop, rounds)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue().splitlines()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__)
    ap.add_argument("--samples", type=int, default=40, help="samples per case (default 40)")
    ap.add_argument("--quick", action="store_true", help="10 samples per case")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the 10-policy case")
    args = ap.parse_args(argv)
    samples = 10 if args.quick else args.samples
    t0 = time.monotonic()
    fig = measure(samples=samples)
    for line in report_lines(fig):
        print(line)
    if args.profile:
        for line in profile_lines():
            print(line)
    print(f"({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
