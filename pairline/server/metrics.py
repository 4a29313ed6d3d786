"""Prometheus metrics in text format, by hand (no client library): vLLM's names with a
`pairline:` prefix where one fits, so existing dashboards need only the prefix changed."""

from __future__ import annotations

import threading
from bisect import bisect_left

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0)


def family(name: str, kind: str, series: dict[str, object]) -> list[str]:
    """A gauge or counter in the text format: its TYPE line, then one sample per label set (in the
    order given). The server's metrics and the router's both render through it."""
    return [f"# TYPE {name} {kind}", *(f"{name}{{{labels}}} {v}" for labels, v in series.items())]


class Histogram:
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def render(self, labels: str) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{self.name}_bucket{{{labels},le="{b}"}} {acc}')
        out.append(f'{self.name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{self.name}_sum{{{labels}}} {self.sum}")
        out.append(f"{self.name}_count{{{labels}}} {self.count}")
        return out


class Metrics:
    """Thread-safe: the engine worker observes, the event loop renders."""

    def __init__(self, model_name: str):
        self.labels = f'model_name="{model_name}"'
        self.lock = threading.Lock()
        h = Histogram
        self.hist = {
            "ttft": h("pairline:time_to_first_token_seconds", "Request arrival at the scheduler to the first token."),
            "itl": h("pairline:inter_token_latency_seconds", "Time between consecutive tokens of a request."),
            "e2e": h("pairline:e2e_request_latency_seconds", "Request arrival at the scheduler to its last token."),
            "queue": h("pairline:request_queue_time_seconds", "Time a request waited for the engine."),
            "prefill": h("pairline:request_prefill_time_seconds", "Prompt evaluation time (uncached tokens only)."),
            "decode": h("pairline:request_decode_time_seconds", "First token to last token."),
        }
        self.counters: dict[str, float] = {
            "pairline:prompt_tokens_total": 0,
            "pairline:generation_tokens_total": 0,
            "pairline:prefix_cache_queries_total": 0,  # prompt tokens looked up in a KV cache
            "pairline:prefix_cache_hits_total": 0,  # of which found (not prefilled again)
            "pairline:kv_evictions_total": 0,
        }
        self.finished: dict[str, int] = {}  # finished_reason -> count
        self.errors: dict[str, int] = {}  # error code -> count
        self.gauges = {"pairline:num_requests_running": 0, "pairline:num_requests_waiting": 0,
                       "pairline:active_sessions": 0, "pairline:kv_resident_caches": 0}

    def observe(self, name: str, v: float) -> None:
        with self.lock:
            self.hist[name].observe(v)

    def add(self, name: str, v: float = 1) -> None:
        with self.lock:
            self.counters[name] += v

    def set(self, name: str, v: float) -> None:
        with self.lock:
            self.gauges[name] = v

    def finish(self, reason: str) -> None:
        with self.lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def error(self, code: str) -> None:
        with self.lock:
            self.errors[code] = self.errors.get(code, 0) + 1

    def render(self) -> str:
        with self.lock:
            lines: list[str] = []
            for name, v in self.gauges.items():
                lines += family(name, "gauge", {self.labels: v})
            for name, v in self.counters.items():
                lines += family(name, "counter", {self.labels: v})
            lines += family("pairline:request_success_total", "counter",
                            {f'{self.labels},finished_reason="{r}"': n for r, n in sorted(self.finished.items())})
            lines += family("pairline:request_errors_total", "counter",
                            {f'{self.labels},code="{c}"': n for c, n in sorted(self.errors.items())})
            for h in self.hist.values():
                lines += h.render(self.labels)
        return "\n".join(lines) + "\n"
