"""Model hyper-parameters, read from a GGUF file or an HF config.json."""

from __future__ import annotations

from dataclasses import dataclass, field

SUPPORTED_ARCHS = ("llama", "qwen2")


@dataclass(slots=True)
class RopeScaling:
    kind: str = "none"  # none | linear | yarn | llama3 (per-frequency factors from the file)
    factor: float = 1.0
    original_context: int = 0
    freq_factors: list[float] | None = None  # llama3-style, one per rotary frequency
    # YaRN knobs, with the paper's defaults
    beta_fast: float = 32.0
    beta_slow: float = 1.0


@dataclass(slots=True)
class ModelConfig:
    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    max_context: int
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    head_dim: int = 0  # 0: dim // n_heads
    qkv_bias: bool = False
    tie_embeddings: bool = True
    rope: RopeScaling = field(default_factory=RopeScaling)

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads

    @property
    def n_params(self) -> int:
        d, h, kv, f = self.dim, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.ffn_dim
        per_layer = d * (h + 2 * kv) + h * d + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_layer + d + head
