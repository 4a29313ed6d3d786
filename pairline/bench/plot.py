"""Accuracy against wall time: one point per saved `pairline eval humaneval` run, and one per tier
of a saved `pairline eval agent` run.

x is the median wall time per task (log scale; the bar spans the middle half of the tasks), y is
pass@1 (HumanEval) or the pass rate (eval agent: visible and held-out tests) with a 95% Wilson
interval, which at a few dozen problems is wide and worth seeing."""

from __future__ import annotations

import json
from pathlib import Path

from pairline.bench.common import wilson as fraction_interval
from pairline.errors import PairlineError

_COLORS = {"realtime": "#1f77b4", "deep": "#d62728"}


def read_result(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PairlineError(f"cannot read results {path}: {err}") from None
    if not isinstance(data, dict):
        raise PairlineError(f"{path} is not a pairline result")
    return data


def load_results(paths: list[str | Path], kinds: tuple[str, ...] = ("humaneval",)) -> list[dict]:
    """The points to draw: a HumanEval run as it is; an agent run (with "agent" in `kinds`) as one
    point per tier, shaped like a HumanEval run (kind "agent")."""
    results = []
    for p in paths:
        data = read_result(p)
        if data.get("kind") == "agent" and "agent" in kinds:
            points = _agent_points(data)
            if not points:
                raise PairlineError(f"{p} is a `pairline eval agent` result without a finished task")
            results += points
        elif data.get("kind") == "humaneval" and "humaneval" in kinds and (data.get("summary") or {}).get("n"):
            results.append(data)
        else:
            what = " or ".join(f"`pairline eval {k}`" for k in kinds)
            raise PairlineError(f"{p} is not a {what} result with at least one task")
    return results


def _agent_points(data: dict) -> list[dict]:
    return [{"kind": "agent", "tier": t["tier"], "model": t["model"], "summary": t["summary"],
             "runtime": t.get("runtime"), "threads": t.get("threads"), "server": None,
             "machine": data.get("machine", {}), "settings": {}}
            for t in data.get("tiers", []) if (t.get("summary") or {}).get("n")]


def wilson(passed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion, in percent (bench/common.py's Wilson interval)."""
    lo, hi = fraction_interval(passed, n, z)
    return 100 * lo, 100 * hi


def plot(results: list[dict], out: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    from pairline.bench.humaneval import where_ran

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    machines = []
    ordered = sorted(results, key=lambda r: r["summary"]["median_wall_s"])
    for i, r in enumerate(ordered):
        s = r["summary"]
        x, y = s["median_wall_s"], s["pass_at_1"]
        lo, hi = wilson(s["passed"], s["n"])
        color = _COLORS.get(r.get("tier"), "#555555")
        ax.errorbar(x, y, yerr=[[y - lo], [hi - y]],
                    xerr=[[x - s.get("p25_wall_s", x)], [s.get("p75_wall_s", x) - x]],
                    fmt="s" if r.get("kind") == "agent" else "o", color=color, ms=9, capsize=4, lw=1.2)
        if r.get("kind") == "agent":
            how, score = "eval agent", "pass"
        else:
            how = {"prediction": "prompt as prediction", "lookup": "prompt lookup", "off": "no drafts"}.get(
                r["settings"].get("speculation"), "?")
            score = "pass@1"
        label = (f"{r.get('tier')}: {r['model']}\n{score} {y:.1f}% ({s['passed']}/{s['n']}), "
                 f"{x:.1f} s/task\n{where_ran(r)}, {how}")
        # labels stack in rows at the bottom (pass@1 of these tiers sits in the upper half), one row
        # per point, so neighbours never overlap; a thin line leads to each point
        ax.annotate(label, (x, y), textcoords=("data", "axes fraction"), xytext=(x * 1.1, 0.04 + 0.15 * i),
                    fontsize=8, color=color, arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6})
        machines.append(r.get("machine", {}).get("label", "?"))
    xs = [r["summary"]["median_wall_s"] for r in results] + [r["summary"].get("p75_wall_s", 0) for r in results]
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlim(min(xs) / 2.5, max(xs) * 4)
    ax.set_ylim(0, 100)
    ax.set_xlabel("wall time per task, median, s (log scale; bar: 25th-75th percentile)")
    kinds = {r.get("kind", "humaneval") for r in results}
    if kinds == {"agent"}:
        ax.set_ylabel("eval agent: tasks passed, % (bar: 95% Wilson interval)")
        bench = "pairline eval agent"
    elif kinds == {"humaneval"}:
        ax.set_ylabel("HumanEval pass@1, % (greedy; bar: 95% Wilson interval)")
        bench = "HumanEval"
    else:
        ax.set_ylabel("pass@1 / tasks passed, % (bar: 95% Wilson interval)")
        bench = "HumanEval and eval agent"
    ns = sorted({r["summary"]["n"] for r in results})
    ax.set_title(title or f"Accuracy against wall time, {bench} (N = {', '.join(map(str, ns))})", fontsize=11)
    fig.text(0.01, 0.01, "machine: " + "; ".join(sorted(set(machines))), fontsize=7, color="#444444")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
