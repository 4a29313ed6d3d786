"""Small builders shared by the engine tests: tiny random-weight models and a real tokenizer."""

from __future__ import annotations

import torch

from pairline.engine.config import ModelConfig
from pairline.engine.generate import Engine
from pairline.engine.runtimes.torch_model import Transformer
from pairline.engine.runtimes.torch_runtime import TorchRuntime
from pairline.engine.speculative import StepCosts


def tiny_config(arch: str = "llama", vocab: int = 49152, **kw) -> ModelConfig:
    base = dict(arch=arch, vocab_size=vocab, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                max_context=8192, rope_theta=10000.0, qkv_bias=arch == "qwen2", tie_embeddings=False)
    base.update(kw)
    return ModelConfig(**base)


def random_state(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in loader naming (wq/wk/wv, w1/w3), scaled so logits are well spread."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        ref = Transformer(cfg)
    state = {}
    for name, p in ref.named_parameters():
        if name.endswith("norm.weight"):
            state[name] = 1.0 + 0.1 * torch.randn(p.shape)
        else:
            state[name] = torch.randn(p.shape) * (1.0 / p.shape[-1] ** 0.5) * (4.0 if "embeddings" in name else 1.0)
    # split the fused projections back into loader names
    out = {}
    for name, t in state.items():
        if ".wqkv." in name:
            q = cfg.n_heads * cfg.head_dim
            kv = cfg.n_kv_heads * cfg.head_dim
            for part, chunk in zip("qkv", torch.split(t, [q, kv, kv]), strict=True):
                out[name.replace("wqkv", f"w{part}")] = chunk.clone()
        elif ".w13." in name:
            w1, w3 = t.chunk(2)
            out[name.replace("w13", "w1")] = w1.clone()
            out[name.replace("w13", "w3")] = w3.clone()
        else:
            out[name] = t
    return out


def tiny_engine(tokenizer, arch: str = "llama", n_ctx: int = 1024, dtype=torch.bfloat16, seed: int = 0,
                prefill_chunk: int = 256, quant: str = "none") -> Engine:
    cfg = tiny_config(arch, vocab=tokenizer.vocab_size)
    rt = TorchRuntime(cfg, random_state(cfg, seed), n_ctx=n_ctx, dtype=dtype, quant=quant)
    engine = Engine(rt, tokenizer, model_name=f"tiny-{arch}", prefill_chunk=prefill_chunk)
    # Verifying on a tiny model costs about as much as stepping, so the adaptive policy would rightly
    # stop drafting; these engines exist to test the loop, so costs are pinned where drafts pay.
    engine.step_costs = pinned_costs()
    return engine


def pinned_costs() -> StepCosts:
    return StepCosts(slope_hint=0.1, learn=False)
