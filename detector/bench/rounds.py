"""Timings taken in alternating rounds, the ratio of such a pair with the spread of its
rounds, and the verdict on a target: met, missed, or within noise.

On a shared machine a single timing is at the mercy of the neighbours. Every side of a
ratio is timed in the same process, in turn (A, B, A, B, ...), and the ratio is taken
within a round, never across rounds: each side's fastest round alone can pair a round in
which the process had both cores with one in which it had half of them (the old
bench's jobs, rerun: a YOLO step's round at 0.18 s against MSE rounds at 0.31-0.51 s,
the same CPU time, 0.28-0.32 s per step, on either side: ``loss_overhead`` -0.72 from
the fastest rounds, 0.03 within a round). The figure is the ratio of
the least-disturbed round (the smallest sum of each side's cost over its own fastest);
its spread is the largest minus the smallest ratio over the rounds. A figure whose
spread exceeds its distance to the target cannot tell met from missed, and says so.
"""

import math
from collections.abc import Callable

# ratio: (comparison, bound). Why these bounds: docs/performance.md.
TARGETS = {
    "pipeline_ratio": (">=", 0.95),
    "loss_overhead": ("<=", 0.10),
    "full_step_vs_matmul": (">=", 0.50),
    "eval_vs_forward": (">=", 0.80),
    "callback_share": ("<=", 0.15),
    "pipeline_vs_decode": ("<=", 2.0),
    "pipeline_scaling": (">=", 1.8),
}


def alternate(jobs: dict[str, Callable[[], dict]], rounds: int, warmup: int = 1) -> dict:
    """Runs every job once per round, in the order given, `warmup` untimed rounds first.

    Args:
        jobs: name -> zero-argument callable returning {measure: value}, each value a
            cost (seconds, CPU milliseconds per image...): lower is faster.
        rounds: int. Rounds kept.
        warmup: int. Rounds run first and dropped (tracing, caches). Defaults to 1.

    Returns:
        {measure: [value of round 1, ..., value of round `rounds`]}.
    """
    out: dict[str, list[float]] = {}
    for index in range(warmup + rounds):
        for job in jobs.values():
            for key, value in job().items():
                if index >= warmup:
                    out.setdefault(key, []).append(float(value))
    return out


def figure(name: str, rounds: dict, formula: Callable[..., float], *sides: str) -> dict:
    """A ratio and its spread from alternating rounds.

    Args:
        name: str. The figure's key.
        rounds: {measure: per-round costs} (`alternate`'s result).
        formula: the figure from one value of each of `sides`, in order.
        sides: str. The measures it reads, costs (lower is faster).

    Returns:
        {name: the formula on the least-disturbed round (the smallest sum over the sides
        of cost ÷ that side's fastest round), name + "_spread": the largest minus the
        smallest of the formula round by round}.
    """
    per_side = [rounds[side] for side in sides]
    fastest = [min(values) for values in per_side]
    pairs = list(zip(*per_side, strict=True))
    per_round = [formula(*values) for values in pairs]
    disturbed = [sum(v / f for v, f in zip(values, fastest, strict=True)) for values in pairs]
    best = per_round[disturbed.index(min(disturbed))]
    return {name: best, f"{name}_spread": max(per_round) - min(per_round)}


def verdict(name: str, value: float, spread: float) -> tuple[str, float]:
    """("met" | "missed" | "within noise", margin) of a figure against ``TARGETS[name]``.

    The margin is the figure's distance to the bound, positive on the met side. When the
    rounds disagree by more than that distance (``spread > |margin|``), a second run could
    land on the other side: "within noise".
    """
    comparison, bound = TARGETS[name]
    margin = value - bound if comparison == ">=" else bound - value
    if math.isnan(value):
        return "not measured", margin
    if spread > abs(margin):
        return "within noise", margin
    return ("met" if margin >= 0 else "missed"), margin


def load_or_say(config: str, overrides: list[str]):
    """The benchmarks' config (`load_config`), or None after one ``error:`` line naming
    the bad key or file (the command then exits 2)."""
    import sys

    from detector.config.schema import load_config

    try:
        return load_config(config, overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
