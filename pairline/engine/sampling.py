"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, seeded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pairline.errors import PairlineError


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings; the text ends before the first one
    stop_token_ids: tuple[int, ...] = ()  # in addition to the tokenizer's end-of-turn tokens
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        self.stop_token_ids = tuple(self.stop_token_ids)
        if self.max_tokens < 1:
            raise PairlineError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            raise PairlineError(f"temperature must be between 0 and 5, got {self.temperature}")
        if self.top_k < 0:
            raise PairlineError(f"top_k must be 0 (off) or positive, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise PairlineError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise PairlineError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Draws tokens from float32 logits (a numpy array, or anything `np.asarray` takes without a
    copy, such as a CPU tensor). numpy rather than torch: the llama.cpp path never imports torch,
    which saves 1.5 s of every command's start."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def probs(self, logits) -> np.ndarray:
        """logits [V] -> the float64 distribution tokens are drawn from, after temperature, top-k, top-p."""
        p = self.params
        z = np.asarray(logits, dtype=np.float64) / p.temperature
        if p.top_k and p.top_k < z.shape[-1]:
            kth = np.partition(z, -p.top_k)[-p.top_k]
            z = np.where(z < kth, -np.inf, z)
        z = np.exp(z - z.max())
        probs = z / z.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            sorted_p = probs[order]
            # keep the smallest prefix whose mass reaches top_p (always at least the top token)
            drop = (np.cumsum(sorted_p) - sorted_p) >= p.top_p
            probs = probs.copy()
            probs[order[drop]] = 0.0
            probs /= probs.sum()
        return probs

    def draw(self, probs: np.ndarray) -> int:
        # inverse CDF: one uniform per token, so a seed fixes the whole stream
        cdf = np.cumsum(probs)
        return int(min(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"), len(probs) - 1))

    def sample(self, logits) -> int:
        if self.params.greedy:
            return int(np.argmax(logits))
        return self.draw(self.probs(logits))

    def uniform(self) -> float:
        return float(self.rng.random())
