"""The GPU variant of pairline's transformer: the same weights and math as torch_model.py, arranged
so that decode and verify steps have static shapes (CUDA graphs can replay them) and prefill
chunks go through a fused attention kernel.

Two forwards over one static KV cache:
- `forward_static(ids, pos, slot, kv_len)`: a fixed number of rows R. Positions and write slots
  are device tensors, the KV is written with index_copy_, and attention covers the first kv_len
  cache positions under a mask built from `pos` on the device. Nothing depends on host values
  except the shapes (R, kv_len), so one captured graph serves every step of that shape. Rows that
  only pad a call to R write to a trash slot past the end of the cache and are never attended.
- `forward_prefill(ids, start)`: a chunk at host-known positions, SDPA with lower-right causal
  alignment (flash on CUDA), grouped-query attention without repeating KV heads.

Shapes: R = rows of a static step, n = rows of a prefill chunk, H = query heads, K = kv heads,
G = H // K, D = head dim, S = positions the cache holds (one more is allocated: the trash slot),
L = kv_len, the cache positions a step attends."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

from pairline.engine.config import ModelConfig
from pairline.engine.runtimes.torch_model import Embedding, FeedForward, Linear, RMSNorm, apply_rope, rope_frequencies

STATIC_KERNELS = ("matmul", "sdpa", "triton")

try:  # the split-KV decode kernel; absent on CPU-only installs (CI), present on the GPU machines
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


class StaticKV(nn.Module):
    """One layer's cache, [K, S + 1, D]; slot S is the trash slot that pad rows write to."""

    def __init__(self, n_kv: int, max_len: int, head_dim: int, dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        shape = (n_kv, max_len + 1, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)


class StaticAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.wqkv = Linear(cfg.dim, q + 2 * kv, bias=cfg.qkv_bias)
        self.wo = Linear(q, cfg.dim, bias=False)
        self.kv: StaticKV | None = None
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.static_kernel = "matmul"  # or "sdpa": how static steps attend (StaticTransformer.set_static_kernel)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # x [n, dim] -> q [n, H, D], k [K, n, D], v [K, n, D]
        n, H, K, D = x.shape[0], self.n_heads, self.n_kv, self.head_dim
        qkv = self.wqkv(x)
        qk = apply_rope(qkv[:, : (H + K) * D].view(n, H + K, D), cos, sin)
        v = qkv[:, (H + K) * D :].view(n, K, D).transpose(0, 1)
        return qk[:, :H], qk[:, H:].transpose(0, 1), v

    def forward_static(
        self, x: Tensor, cos: Tensor, sin: Tensor, slot: Tensor, pos: Tensor, allowed: Tensor | None, kv_len: int
    ) -> Tensor:
        """x [R, dim]; slot [R] cache index each row writes; pos [R] each row's position; allowed
        [G*R, L] bool (row g*R + r is row r), built for the matmul and sdpa kernels only."""
        R, H, K, D = x.shape[0], self.n_heads, self.n_kv, self.head_dim
        q, k, v = self._qkv(x, cos, sin)
        # index_copy_ takes the slots as a device tensor: the write position is data, not a shape
        self.kv.k.index_copy_(1, slot, k)
        self.kv.v.index_copy_(1, slot, v)
        L = kv_len
        keys, values = self.kv.k[:, :L], self.kv.v[:, :L]  # [K, L, D]
        # queries grouped per KV head: the G heads that share a KV head become G*R rows of one matmul,
        # so the KV is read once per KV head and never repeated
        q = q.reshape(R, K, H // K, D).permute(1, 2, 0, 3).reshape(K, (H // K) * R, D)  # [K, G*R, D]
        if self.static_kernel == "triton":
            out = split_kv_attention(q.contiguous(), self.kv.k, self.kv.v, pos, L, self.scale).to(values.dtype)
        elif self.static_kernel == "sdpa":
            # one fused kernel under the mask (memory-efficient attention on CUDA): no scores in memory
            out = F.scaled_dot_product_attention(
                q[None], keys[None], values[None], attn_mask=allowed, scale=self.scale
            )[0]  # [K, G*R, D]
        else:
            # matmul + masked softmax: cuBLAS spreads the keys over the whole GPU, at the price of
            # writing and reading the float32 scores [K, G*R, L]
            scores = torch.bmm(q, keys.transpose(1, 2)).float() * self.scale  # [K, G*R, L]
            scores = scores.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(scores, dim=-1).to(values.dtype)
            out = torch.bmm(probs, values)  # [K, G*R, D]
        out = out.view(K, H // K, R, D).permute(2, 0, 1, 3).reshape(R, H * D)
        return self.wo(out)

    def forward_prefill(self, x: Tensor, cos: Tensor, sin: Tensor, start: int) -> Tensor:
        """x [n, dim] at positions start..start+n-1, after `start` cached positions."""
        n, H, D = x.shape[0], self.n_heads, self.head_dim
        q, k, v = self._qkv(x, cos, sin)
        end = start + n
        self.kv.k[:, start:end] = k
        self.kv.v[:, start:end] = v
        keys, values = self.kv.k[:, :end].unsqueeze(0), self.kv.v[:, :end].unsqueeze(0)  # [1, K, L, D]
        q = q.transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        if q.is_cuda and q.dtype == torch.float32 and start > 0:
            # flash takes GQA natively but not float32; the kernel lower-right causal falls back to
            # (memory-efficient) wants as many KV heads as query heads
            G = H // self.n_kv
            keys, values = keys.repeat_interleave(G, dim=1), values.repeat_interleave(G, dim=1)
        # lower-right causal: row i sees keys 0..start+i (flash on CUDA; no mask is materialized there)
        mask = None if start == 0 else causal_lower_right(n, end)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, is_causal=start == 0, scale=self.scale, enable_gqa=True
        )  # [1, H, n, D]
        return self.wo(out[0].transpose(0, 1).reshape(n, H * D))


class StaticBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = StaticAttention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward_static(
        self, x: Tensor, cos: Tensor, sin: Tensor, slot: Tensor, pos: Tensor, allowed: Tensor | None, kv_len: int
    ) -> Tensor:
        h = x + self.attention.forward_static(self.attention_norm(x), cos, sin, slot, pos, allowed, kv_len)
        return h + self.feed_forward(self.ffn_norm(h))

    def forward_prefill(self, x: Tensor, cos: Tensor, sin: Tensor, start: int) -> Tensor:
        h = x + self.attention.forward_prefill(self.attention_norm(x), cos, sin, start)
        return h + self.feed_forward(self.ffn_norm(h))


class StaticTransformer(nn.Module):
    """Parameter names match torch_model.Transformer, so the same state dict loads into either."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(StaticBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.max_len = 0
        self.static_kernel = "matmul"

    def setup_cache(self, max_len: int, dtype: torch.dtype) -> None:
        """Allocate the KV cache (max_len positions plus the trash slot) and RoPE tables, once."""
        device = self.tok_embeddings.weight.device
        self.max_len = max_len
        self._new_kv(dtype)
        inv, mscale = rope_frequencies(self.cfg)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)  # [S, D/2]
        angles = torch.cat((angles, angles), dim=-1)
        self.rope_cos = (angles.cos() * mscale).to(dtype).unsqueeze(1).to(device)  # [S, 1, D]
        self.rope_sin = (angles.sin() * mscale).to(dtype).unsqueeze(1).to(device)
        self.key_index = torch.arange(max_len, device=device)  # [S], sliced to L for the masks

    def _new_kv(self, dtype: torch.dtype) -> None:
        device = self.tok_embeddings.weight.device
        for layer in self.layers:
            layer.attention.kv = StaticKV(self.cfg.n_kv_heads, self.max_len, self.cfg.head_dim, dtype, device)

    def fork(self) -> StaticTransformer:
        """A copy that shares every weight and table but has its own empty KV cache."""
        shared = [*self.parameters(), *self.buffers(), self.rope_cos, self.rope_sin, self.key_index]
        other = copy.deepcopy(self, memo={id(t): t for t in shared})
        other._new_kv(self.rope_cos.dtype)
        return other

    def set_static_kernel(self, kernel: str) -> None:
        if kernel not in STATIC_KERNELS:
            raise ValueError(f"unknown static-step attention {kernel!r}; use one of {', '.join(STATIC_KERNELS)}")
        if kernel == "triton" and triton is None:
            raise ValueError("the triton static-step attention needs the triton package")
        self.static_kernel = kernel
        for layer in self.layers:
            layer.attention.static_kernel = kernel

    def forward_static(self, ids: Tensor, pos: Tensor, slot: Tensor, kv_len: int) -> Tensor:
        """ids, pos, slot: [R] device tensors. Returns float32 logits [R, V] for every row.
        Graph-safe: no host reads, no shape that depends on tensor values."""
        G = self.cfg.n_heads // self.cfg.n_kv_heads
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # [R, 1, D], gathered on the device
        allowed = None
        if self.static_kernel != "triton":  # the kernel masks by position itself
            allowed = self.key_index[:kv_len][None, :] <= pos[:, None]  # [R, L]: row r sees keys 0..pos[r]
            allowed = allowed.repeat(G, 1)  # [G*R, L], the grouped query layout
        x = self.tok_embeddings(ids)
        for layer in self.layers:
            x = layer.forward_static(x, cos, sin, slot, pos, allowed, kv_len)
        return self.output(self.norm(x)).float()

    def forward_prefill(self, ids: Tensor, start: int, rows: slice | None) -> Tensor | None:
        """ids [n] at positions start..; returns float32 logits [rows, V] for the rows asked, or None."""
        n = ids.shape[0]
        cos, sin = self.rope_cos[start : start + n], self.rope_sin[start : start + n]
        x = self.tok_embeddings(ids)
        for layer in self.layers:
            x = layer.forward_prefill(x, cos, sin, start)
        if rows is None:
            return None
        return self.output(self.norm(x[rows])).float()


# ------------------------------------------------------------------------------ split-KV decode attention

SPLIT_MIN = 256  # keys per split, at least: a split is one program's share of the keys


def split_size(kv_len: int, splits: int = 32) -> int:
    """Keys per split for a step that may attend kv_len positions: about `splits` programs per
    row block (enough to fill the GPU at long contexts), a power of two, fixed per kv_len so a
    captured graph always splits the same way (split boundaries are absolute positions, so a row's
    result does not depend on the other rows of its call)."""
    return max(SPLIT_MIN, 1 << max(-(-kv_len // splits) - 1, 0).bit_length())


def split_kv_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, kv_len: int, scale: float) -> Tensor:
    """Attention of the grouped query rows over the cache, masked by position, as flash-decoding does:
    q [K, M, D] (row m is query row m % R), caches [K, S+1, D], pos [R] -> [K, M, D] float32.

    Each program takes one KV head, a block of rows and a split of the keys, and skips the keys past
    the furthest position in its rows: the bytes read follow the context actually cached, not kv_len,
    and positions arrive as a tensor, so the launch is graph-safe. The splits are merged here with
    the usual max/sum rescaling; a split past a row's position contributes exact zeros."""
    K, M, D = q.shape
    R = pos.shape[0]
    split = split_size(kv_len)
    n_splits = -(-kv_len // split)
    block_m = 16 if M <= 16 else 64
    o = torch.empty(K, n_splits, M, D, dtype=torch.float32, device=q.device)
    m = torch.empty(K, n_splits, M, dtype=torch.float32, device=q.device)
    lse = torch.empty_like(m)
    grid = (K, -(-M // block_m), n_splits)
    _split_kv_kernel[grid](
        q, k_cache, v_cache, pos, o, m, lse,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        o.stride(0), o.stride(1), o.stride(2), m.stride(0), m.stride(1),
        M, R, scale,
        SPLIT=split, BLOCK_M=block_m, BLOCK_N=64, D=D,
    )
    top = m.max(dim=1, keepdim=True).values  # [K, 1, M]
    w = torch.exp(m - top)  # [K, splits, M]; 0 for splits no row of the block reached
    return (o * w[..., None]).sum(dim=1) / (lse * w).sum(dim=1)[..., None]


if triton is not None:

    @triton.jit
    def _split_kv_kernel(
        q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, m_ptr, l_ptr,
        stride_qh, stride_qm, stride_kh, stride_kn, stride_vh, stride_vn,
        stride_oh, stride_os, stride_om, stride_mh, stride_ms,
        M, R, scale,
        SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    ):
        h, mb, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        pos = tl.load(pos_ptr + rows % R, mask=row_ok, other=-1)  # [BLOCK_M]
        d = tl.arange(0, D)
        q = tl.load(q_ptr + h * stride_qh + rows[:, None] * stride_qm + d[None, :], mask=row_ok[:, None], other=0.0)
        last = tl.max(pos, axis=0)  # the furthest key any row of this block attends
        # a finite floor instead of -inf: a row with no key in this split keeps m = floor, l = 0,
        # acc = 0 (no inf - inf), and the merge weighs the split by exp(floor - max) = 0
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        start = s * SPLIT
        for i in range(SPLIT // BLOCK_N):  # a static trip count; the skip below is what is dynamic
            n0 = start + i * BLOCK_N
            if n0 <= last:  # keys past every row's position are never loaded
                keys = n0 + tl.arange(0, BLOCK_N)
                k_ok = keys <= last
                k = tl.load(k_ptr + h * stride_kh + keys[:, None] * stride_kn + d[None, :], mask=k_ok[:, None],
                            other=0.0)
                scores = tl.dot(q, tl.trans(k)) * scale  # [BLOCK_M, BLOCK_N], float32
                scores = tl.where(keys[None, :] <= pos[:, None], scores, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(scores, axis=1))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(scores - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, axis=1)
                v = tl.load(v_ptr + h * stride_vh + keys[:, None] * stride_vn + d[None, :], mask=k_ok[:, None],
                            other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m_i = m_new
        out = o_ptr + h * stride_oh + s * stride_os + rows[:, None] * stride_om + d[None, :]
        tl.store(out, acc, mask=row_ok[:, None])
        tl.store(m_ptr + h * stride_mh + s * stride_ms + rows, m_i, mask=row_ok)
        tl.store(l_ptr + h * stride_mh + s * stride_ms + rows, l_i, mask=row_ok)


# ------------------------------------------------------------------------------ weight-only quantization


class Int8Linear(nn.Module):
    """Weight-only int8, one scale per output row (as gpt-fast's quantize.py). The product is written
    as dequantize-then-matmul, which torch.compile fuses into one kernel that reads the int8 bytes
    only; run eagerly it materializes the bf16 weight, so CudaRuntime compiles when quantized."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        w = weight.float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # [out]
        self.register_buffer("weight", (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(weight.dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight.to(x.dtype)) * self.scales
        return y if self.bias is None else y + self.bias


INT4_GROUPS = (32, 64, 128, 256)


class Int4Linear(nn.Module):
    """Weight-only int4, asymmetric per group of `group` input columns, in the tinygemm layout that
    torch's _weight_int4pack_mm reads (as gpt-fast's quantize.py): q in 0..15, w ≈ (q - 8) * scale + zero.
    bf16 activations only; CUDA (sm80+) or CPU (the _for_cpu ops)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, group: int = 128, inner_k_tiles: int = 8):
        super().__init__()
        n, k = weight.shape
        if not int4_fits(n, k, group, inner_k_tiles):
            raise ValueError(f"int4 needs out % 8 == 0 and in % {max(group, 16 * inner_k_tiles)} == 0; got {n}x{k}")
        w = weight.float().reshape(-1, group)  # [n * k / group, group]
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
        scales = ((hi - lo) / 15).clamp(min=1e-6)
        zeros = lo + scales * 8  # the zero point in the float domain, as tinygemm expects
        q = ((w - lo) / scales).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        self.group, self.out_features = group, n
        self.cpu = weight.device.type == "cpu"
        if self.cpu:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, inner_k_tiles)
        else:
            pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # [n, k/2], two nibbles a byte
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, inner_k_tiles)
        sz = torch.stack([scales.reshape(n, k // group).t(), zeros.reshape(n, k // group).t()], dim=-1)
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros", sz.to(torch.bfloat16).contiguous())  # [k/group, n, 2]
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: Tensor) -> Tensor:
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu if self.cpu else torch.ops.aten._weight_int4pack_mm
        y = mm(x.to(torch.bfloat16), self.weight, self.group, self.scales_and_zeros)
        return (y if self.bias is None else y + self.bias).to(x.dtype)


def int4_fits(n: int, k: int, group: int, inner_k_tiles: int = 8) -> bool:
    return group in INT4_GROUPS and n % 8 == 0 and k % group == 0 and k % (16 * inner_k_tiles) == 0


def quantize(model: nn.Module, kind: str, group: int = 128) -> int:
    """Swap Linear layers for int8 or int4 ones in place; returns how many were swapped. A tied
    output projection gets its own quantized copy (the embedding table stays as it is: a lookup
    reads one row, the projection reads all of them every step). int4 leaves layers whose shapes
    the packed kernel cannot take in bf16."""
    swapped = 0
    for name, child in list(model.named_children()):
        if isinstance(child, Linear):
            inner = 2 if child.weight.device.type == "cpu" else 8
            if kind == "int8":
                setattr(model, name, Int8Linear(child.weight.data, child.bias))
            elif int4_fits(child.out_features, child.in_features, group, inner):
                setattr(model, name, Int4Linear(child.weight.data, child.bias, group, inner))
            else:
                continue
            swapped += 1
        else:
            swapped += quantize(child, kind, group)
    return swapped
