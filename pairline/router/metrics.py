"""The router's Prometheus metrics, labelled by tier and backend. Histograms are the server's kind
(pairline.wire.metrics: same buckets, same text format); everything is touched from the event loop only,
so no lock. The request ledger is here too: accepted = completed + errored + cancelled."""

from __future__ import annotations

from collections import defaultdict

from pairline.wire.metrics import Histogram, family

P = "pairline:router_"


def _labels(**kv: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in kv.items())


class HistogramFamily:
    """One histogram per label set, rendered under one HELP/TYPE header."""

    def __init__(self, name: str, help_: str):
        self.name, self.help = name, help_
        self.children: dict[str, Histogram] = {}

    def observe(self, labels: str, v: float) -> None:
        h = self.children.get(labels)
        if h is None:
            h = self.children[labels] = Histogram(self.name, self.help)
        h.observe(v)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, h in sorted(self.children.items()):
            out += h.render(labels)[2:]  # the child's own HELP/TYPE lines are the family's
        return out


class RouterMetrics:
    def __init__(self):
        self.counters: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.ttft = HistogramFamily(P + "time_to_first_token_seconds",
                                    "Request sent to a backend -> its first token at the router.")
        self.itl = HistogramFamily(P + "inter_token_latency_seconds", "Gap between streamed tokens at the router.")
        self.gauges: dict[str, dict[str, float]] = defaultdict(dict)

    def inc(self, name: str, labels: str, v: float = 1) -> None:
        self.counters[P + name][labels] += v

    def get(self, name: str, labels: str) -> float:
        return self.counters[P + name].get(labels, 0)

    def render(self, backends, tiers) -> str:
        """`backends`: Backend objects (state read live); `tiers`: tier name -> outstanding."""
        lines: list[str] = []
        g = {
            "outstanding": {_labels(tier=t): n for t, n in tiers.items()},
            "backend_outstanding": {},
            "backend_healthy": {},
            "backend_circuit_state": {},  # 0 closed, 1 half-open, 2 open
            "backend_ttft_ewma_seconds": {},
        }
        for b in backends:
            lb = _labels(tier=b.tier, backend=b.name)
            g["backend_outstanding"][lb] = b.outstanding
            g["backend_healthy"][lb] = int(b.healthy)
            g["backend_circuit_state"][lb] = b.breaker.gauge()
            if b.ewma_ttft is not None:
                g["backend_ttft_ewma_seconds"][lb] = round(b.ewma_ttft, 6)
        for name, series in g.items():
            lines += family(P + name, "gauge", dict(sorted(series.items())))
        for name, series in sorted(self.counters.items()):
            lines += family(name, "counter", {lb: f"{v:g}" for lb, v in sorted(series.items())})
        lines += self.ttft.render() + self.itl.render()
        return "\n".join(lines) + "\n"


labels = _labels
