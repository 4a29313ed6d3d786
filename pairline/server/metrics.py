"""The server's Prometheus metrics: vLLM's names with a `pairline:` prefix where one fits, so
existing dashboards need only the prefix changed. The text format itself: pairline.wire.metrics."""

from __future__ import annotations

import threading

from pairline.wire.metrics import Histogram, family


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
            "fim_ttft": h("pairline:fim_time_to_first_token_seconds",
                          "Infill requests (completions with a suffix): arrival to the first token."),
        }
        self.counters: dict[str, float] = {
            "pairline:prompt_tokens_total": 0,
            "pairline:generation_tokens_total": 0,
            "pairline:prefix_cache_queries_total": 0,  # prompt tokens looked up in a KV cache
            "pairline:prefix_cache_hits_total": 0,  # of which found (not prefilled again)
            "pairline:kv_evictions_total": 0,
            # a cache that held little of its prompt copied another idle cache's head (a new
            # session on a file others have open): copies, and the positions not prefilled again
            "pairline:kv_prefix_copies_total": 0,
            "pairline:kv_prefix_copied_tokens_total": 0,
            # prefill ahead of requests (draft.update, context.update): positions computed, engine
            # seconds spent, and positions a request then reused (the rest was wasted)
            "pairline:prefill_ahead_tokens_total": 0,
            "pairline:prefill_ahead_seconds_total": 0,
            "pairline:prefill_ahead_used_tokens_total": 0,
            # infill requests (an editor's inline suggestions), and those cancelled by a newer keystroke
            "pairline:fim_requests_total": 0,
            "pairline:fim_requests_cancelled_total": 0,
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
