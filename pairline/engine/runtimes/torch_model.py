"""pairline's own transformer for the Llama and Qwen2 families: GQA, RoPE, RMSNorm, SwiGLU,
optional qkv bias, tied embeddings. One static KV cache, written in place.

Shapes: n = tokens in this call, H = query heads, K = kv heads, G = H // K, D = head dim,
S = allocated context, L = positions attended this call (start + n)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairline.engine.config import ModelConfig, RopeScaling
from pairline.engine.runtime import Interrupted


def rope_frequencies(cfg: ModelConfig) -> tuple[Tensor, float]:
    """Inverse frequencies [D/2] after the file's scaling, and the attention scale YaRN asks for."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    rope: RopeScaling = cfg.rope
    mscale = 1.0
    if rope.kind == "linear":
        inv = inv / rope.factor
    elif rope.kind == "llama3" and rope.freq_factors:
        inv = inv / torch.tensor(rope.freq_factors, dtype=torch.float64)
    elif rope.kind == "yarn":
        inv, mscale = _yarn(inv, cfg, rope)
    return inv.float(), mscale


def _yarn(inv: Tensor, cfg: ModelConfig, rope: RopeScaling) -> tuple[Tensor, float]:
    # YaRN (Peng et al. 2023): keep high frequencies, interpolate low ones, ramp in between.
    d, base = cfg.head_dim, cfg.rope_theta
    ctx = rope.original_context or cfg.max_context

    def dim_for(rotations: float) -> float:
        return d * math.log(ctx / (rotations * 2 * math.pi)) / (2 * math.log(base))

    lo = max(math.floor(dim_for(rope.beta_fast)), 0)
    hi = min(math.ceil(dim_for(rope.beta_slow)), d - 1)
    ramp = ((torch.arange(d // 2, dtype=torch.float64) - lo) / max(hi - lo, 1e-3)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (original frequency), 0: interpolate
    inv = inv / rope.factor * (1 - keep) + inv * keep
    mscale = 0.1 * math.log(rope.factor) + 1.0 if rope.factor > 1 else 1.0
    return inv, mscale


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


# Prefill attention's float32 scores are computed in row blocks of at most this many bytes (_masked).
SCORE_BYTES = 16 << 20

# Calls with at most this many tokens (decode steps, speculative verify steps) take the
# row-by-row attention path; larger ones (prefill chunks) the masked batched path.
EXACT_ROWS = 32


class Linear(nn.Linear):
    """nn.Linear that can run wide inputs (prefill chunks) in float32: on CPUs without native bf16
    arithmetic a float32 GEMM is several times faster than bf16, while decode and verify steps
    (narrow inputs) stay in bf16, where each row's result does not depend on the batch size."""

    upcast_rows = 0  # inputs with more rows than this run in float32; 0: never

    def reset_parameters(self) -> None:
        pass  # weights always come from a file; random init would only cost start-up time

    def forward(self, x: Tensor) -> Tensor:
        if self.upcast_rows and x.shape[0] > self.upcast_rows and x.dtype != torch.float32:
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
        return F.linear(x, self.weight, self.bias)


class Int8Linear(nn.Module):
    """Weight-only int8 with one bf16 scale per output row (as in gpt-fast's quantize.py). Narrow
    inputs run torch's int8 x bf16 kernel, which reads a quarter of float32's bytes and computes
    each row on its own (the same bits whatever the batch); wide inputs (prefill chunks)
    dequantize once and run a float32 GEMM."""

    def __init__(self, weight: Tensor, bias: Tensor | None, upcast_rows: int):
        super().__init__()
        if weight.is_meta:  # a shell for weights quantized earlier (load_state_dict fills it), no math:
            w8 = torch.empty(weight.shape, dtype=torch.int8, device="meta")  # meta arithmetic imports dynamo
            scales = torch.empty(weight.shape[0], dtype=torch.bfloat16, device="meta")
        else:
            w = weight.float()
            scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # [out]
            w8 = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight", w8)
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))
        self.upcast_rows = upcast_rows

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > self.upcast_rows:
            w = self.weight.float() * self.scales.float()[:, None]
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), w, bias).to(x.dtype)
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scales)
        return (y if self.bias is None else y + self.bias).to(x.dtype)


def quantize_int8(model: nn.Module, upcast_rows: int) -> None:
    """Swap every Linear for an Int8Linear, in place (the embedding table stays as it is)."""
    for name, child in list(model.named_children()):
        if isinstance(child, Linear):
            setattr(model, name, Int8Linear(child.weight.data, child.bias, upcast_rows))
        else:
            quantize_int8(child, upcast_rows)


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass  # as Linear


class KVCache(nn.Module):
    """Static cache for one layer, [K, S, D]; positions past the session length are stale, never read."""

    def __init__(self, n_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        # empty, not zeros: every row is written before it is read, and zeroing a 32k-position cache
        # (800 MB for Qwen2.5-0.5B) cost a quarter of a second at each load and fork
        self.register_buffer("k", torch.empty(n_kv_heads, max_len, head_dim, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.empty(n_kv_heads, max_len, head_dim, dtype=dtype), persistent=False)

    def write(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: [K, n, D] -> cache views [K, L, D]
        end = start + k.shape[1]
        self.k[:, start:end] = k
        self.v[:, start:end] = v
        return self.k[:, :end], self.v[:, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.wqkv = Linear(cfg.dim, q + 2 * kv, bias=cfg.qkv_bias)
        self.wo = Linear(q, cfg.dim, bias=False)
        self.kv_cache: KVCache | None = None
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.wide_dtype = torch.float32  # prefill attention's products (_masked); bf16 where the CPU has it

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int, mask: Tensor | None) -> Tensor:
        n = x.shape[0]
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        qkv = self.wqkv(x)  # [n, (H + 2K) * D]
        qk = apply_rope(qkv[:, : (H + K) * D].view(n, H + K, D), cos, sin)  # [n, H+K, D]
        q = qk[:, :H].reshape(n, K, H // K, D).permute(1, 2, 0, 3)  # [K, G, n, D]
        k = qk[:, H:].transpose(0, 1)  # [K, n, D]
        v = qkv[:, (H + K) * D :].view(n, K, D).transpose(0, 1)  # [K, n, D]
        keys, values = self.kv_cache.write(start, k, v)  # [K, L, D]
        q = q.to(keys.dtype)
        if mask is None:
            out = torch.stack([self._one_row(q[:, :, i], keys, values, start + i + 1) for i in range(n)], dim=2)
        else:
            out = self._masked(q, keys, values, mask)
        out = out.permute(2, 0, 1, 3).reshape(n, H * D)  # [K, G, n, D] -> [n, H*D]
        return self.wo(out.to(x.dtype))

    def _one_row(self, q: Tensor, keys: Tensor, values: Tensor, L: int) -> Tensor:
        """One position's attention over its L keys: q [K, G, D] -> [K, G, D]. Decode steps and the
        rows of a verify step both come here, so they compute the same function on the same shapes:
        batched kernels may group rows differently and flip a near-tie token, which would make
        speculation lossy."""
        scores = torch.bmm(q, keys[:, :L].transpose(1, 2)).float() * self.scale  # [K, G, L]
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        return torch.bmm(probs, values[:, :L])

    def _masked(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        """Prefill chunks: all n rows at once. `mask` [n, n] is causal over the chunk's own keys, the
        last n of L; the earlier keys are all visible. The two products run in `wide_dtype` (float32
        where bf16 is emulated, see Linear; bf16 on bf16 hardware, 2-3x faster), the softmax in float32.
        Rows go in blocks whose scores stay under SCORE_BYTES: a larger temporary is a fresh mmap
        from the allocator at every call, and its page faults cost more than the arithmetic."""
        K, G, n, D = q.shape
        dt = self.wide_dtype
        q = (q * self.scale).to(dt)
        keys_t, values = keys.to(dt).unsqueeze(1).transpose(2, 3), values.to(dt).unsqueeze(1)  # [K, 1, D, L]
        L = keys_t.shape[-1]
        block = max(1, SCORE_BYTES // (K * G * L * 4))
        out = []
        for r in range(0, n, block):
            scores = torch.matmul(q[:, :, r : r + block], keys_t).float()  # [K, G, b, L]
            scores[..., L - n :] += mask[r : r + block]
            out.append(torch.matmul(torch.softmax(scores, dim=-1).to(dt), values))  # [K, G, b, D]
        return out[0] if len(out) == 1 else torch.cat(out, dim=2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: [n, heads, D]; cos, sin: [n, 1, D]; rotate the two halves of each head
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w13 = Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)  # gate and up, fused
        self.w2 = Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int, mask: Tensor | None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, start, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.max_len = 0

    def setup_cache(self, max_len: int, dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> None:
        """Allocate the static KV cache and the RoPE tables once, for up to max_len positions. The
        cache may be wider than the weights: float32 where bf16 arithmetic is emulated makes
        attention several times faster at the cost of twice the cache memory."""
        self.max_len = max_len
        self.kv_dtype = kv_dtype or dtype
        self._new_kv()
        inv, mscale = rope_frequencies(self.cfg)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)  # [S, D/2]
        angles = torch.cat((angles, angles), dim=-1)
        self.rope_cos = (angles.cos() * mscale).to(dtype).unsqueeze(1)  # [S, 1, D]
        self.rope_sin = (angles.sin() * mscale).to(dtype).unsqueeze(1)

    def _new_kv(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(self.cfg.n_kv_heads, self.max_len, self.cfg.head_dim, self.kv_dtype)

    def fork(self) -> Transformer:
        """A copy that shares every weight and RoPE table but has its own empty KV cache."""
        shared = [*self.parameters(), *self.buffers(), self.rope_cos, self.rope_sin]
        other = copy.deepcopy(self, memo={id(t): t for t in shared})
        other._new_kv()
        return other

    def set_wide_attention(self, dtype: torch.dtype) -> None:
        """The dtype of prefill attention's two products (softmax stays float32)."""
        for layer in self.layers:
            layer.attention.wide_dtype = dtype

    def set_upcast_rows(self, rows: int) -> None:
        for m in self.modules():
            if isinstance(m, Linear):
                m.upcast_rows = rows

    def forward(self, tokens: Tensor, start: int, logits_rows: slice | None, cancel=None) -> Tensor | None:
        """tokens: [n] at positions start..start+n-1. Returns logits [rows, V] in float32 for the
        rows asked (None: no logits, as in the middle of a chunked prefill). `cancel` (anything with
        `.cancelled`) is checked between layers: Interrupted once it is set. The KV rows the earlier
        layers wrote lie past the caller's n_past, so the next call overwrites them."""
        n = tokens.shape[0]
        end = start + n
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        mask = None
        if n > EXACT_ROWS:
            # row i sees every earlier position and the chunk's keys 0..i: [n, n], broadcast over heads
            mask = torch.zeros(n, n).masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        x = self.tok_embeddings(tokens)
        for layer in self.layers:
            if cancel is not None and cancel.cancelled:
                raise Interrupted(f"cancelled during a {n}-token call at position {start}")
            x = layer(x, cos, sin, start, mask)
        if logits_rows is None:
            return None
        return self.output(self.norm(x[logits_rows])).float()


def fuse_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Loader names (wq/wk/wv, w1/w3) -> this module's fused wqkv and w13."""
    out = dict(state)
    i = 0
    while f"layers.{i}.attention.wq.weight" in out:
        p = f"layers.{i}."
        for kind in ("weight", "bias"):
            names = [f"{p}attention.w{x}.{kind}" for x in "qkv"]
            if names[0] in out:
                out[f"{p}attention.wqkv.{kind}"] = torch.cat([out.pop(n) for n in names])
        out[f"{p}feed_forward.w13.weight"] = torch.cat(
            [out.pop(f"{p}feed_forward.w1.weight"), out.pop(f"{p}feed_forward.w3.weight")]
        )
        i += 1
    return out
