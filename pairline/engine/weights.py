"""Weights from a GGUF file or an HF safetensors directory, as a config plus a state dict in
pairline's own parameter names (see runtimes/torch_model.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from pairline.engine.config import SUPPORTED_ARCHS, ModelConfig, RopeScaling
from pairline.errors import PairlineError

# GGUF tensor name -> pairline name ("{i}" is the layer index)
_GGUF_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.attention_norm.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.ffn_norm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.attention.wq.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.attention.wk.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.attention.wv.weight",
    "blk.{i}.attn_q.bias": "layers.{i}.attention.wq.bias",
    "blk.{i}.attn_k.bias": "layers.{i}.attention.wk.bias",
    "blk.{i}.attn_v.bias": "layers.{i}.attention.wv.bias",
    "blk.{i}.attn_output.weight": "layers.{i}.attention.wo.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.feed_forward.w1.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.feed_forward.w2.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.feed_forward.w3.weight",
}

# HF safetensors name -> pairline name
_HF_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attention.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attention.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attention.wv.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "layers.{i}.attention.wq.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "layers.{i}.attention.wk.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "layers.{i}.attention.wv.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attention.wo.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.feed_forward.w1.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.feed_forward.w2.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.feed_forward.w3.weight",
}


def _compile_names(table: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    out = []
    for src, dst in table.items():
        pattern = re.escape(src).replace(re.escape("{i}"), r"(\d+)")
        out.append((re.compile(f"^{pattern}$"), dst))
    return out


_GGUF_RE = _compile_names(_GGUF_NAMES)
_HF_RE = _compile_names(_HF_NAMES)


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, dst in table:
        m = pattern.match(name)
        if m:
            return dst.replace("{i}", m.group(1)) if m.groups() else dst
    return None


# ---------------------------------------------------------------- GGUF


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value


def gguf_config(reader) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise PairlineError(
            f"unsupported model architecture {arch!r}; pairline runs {', '.join(SUPPORTED_ARCHS)} models"
        )

    def key(name, default=None):
        return _field(reader, f"{arch}.{name}", default)

    n_heads = int(key("attention.head_count"))
    dim = int(key("embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = key("vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
    rope = RopeScaling()
    scaling_type = key("rope.scaling.type", "none")
    if scaling_type in ("linear", "yarn"):
        rope.kind = scaling_type
        rope.factor = float(key("rope.scaling.factor", 1.0))
        rope.original_context = int(key("rope.scaling.original_context_length", 0))
    elif scaling_type not in ("none", None):
        raise PairlineError(f"unsupported RoPE scaling {scaling_type!r} in the model file")
    if "rope_freqs.weight" in tensor_names:
        rope.kind = "llama3"
        t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        rope.freq_factors = [float(x) for x in np.asarray(t.data, dtype=np.float32)]
    head_dim = int(key("attention.key_length", 0) or key("rope.dimension_count", 0) or dim // n_heads)
    return ModelConfig(
        arch=arch,
        vocab_size=int(vocab),
        dim=dim,
        n_layers=int(key("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(key("attention.head_count_kv", n_heads)),
        ffn_dim=int(key("feed_forward_length")),
        max_context=int(key("context_length", 2048)),
        norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        head_dim=head_dim,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        tie_embeddings="output.weight" not in tensor_names,
        rope=rope,
    )


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter interleaves the rotary halves of Q/K rows for the llama arch
    (its RoPE rotates adjacent pairs); pairline's RoPE rotates halves, so undo that."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _dequantize(tensor) -> np.ndarray:
    import gguf

    try:
        return gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as err:
        raise PairlineError(
            f"tensor {tensor.name} uses quantization {tensor.tensor_type.name}, which pairline cannot read yet"
        ) from err


def load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the gguf package raises ValueError/struct errors on junk
        raise PairlineError(f"{path} is not a readable GGUF file ({err})") from err
    cfg = gguf_config(reader)
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = _rename(tensor.name, _GGUF_RE)
        if name is None:
            continue  # rope_freqs and friends live in the config
        w = _dequantize(tensor)
        if cfg.arch == "llama" and name.endswith(("wq.weight", "wq.bias")):
            w = _unpermute_rotary(w, cfg.n_heads)
        elif cfg.arch == "llama" and name.endswith(("wk.weight", "wk.bias")):
            w = _unpermute_rotary(w, cfg.n_kv_heads)
        if not w.flags.writeable:  # float tensors come back as read-only views of the mapped file
            w = w.copy()
        state[name] = torch.from_numpy(np.ascontiguousarray(w)).to(dtype)
    _check_complete(cfg, state, str(path))
    return cfg, state


# ---------------------------------------------------------------- HF directory


def hf_config(config: dict) -> ModelConfig:
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}.get(
        (config.get("architectures") or [""])[0], config.get("model_type")
    )
    if arch not in SUPPORTED_ARCHS:
        raise PairlineError(f"unsupported model architecture {arch!r}; pairline runs llama and qwen2 models")
    rope = RopeScaling()
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "none"))
    if kind in ("linear", "yarn", "llama3"):
        rope.kind = kind
        rope.factor = float(scaling.get("factor", 1.0))
        rope.original_context = int(
            scaling.get("original_max_position_embeddings", config.get("max_position_embeddings", 0))
        )
        if kind == "llama3":
            rope.freq_factors = _llama3_factors(config, scaling)
    elif kind not in ("none", "default", None):
        raise PairlineError(f"unsupported RoPE scaling {kind!r} in config.json")
    n_heads = config["num_attention_heads"]
    return ModelConfig(
        arch=arch,
        vocab_size=config["vocab_size"],
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads", n_heads),
        ffn_dim=config["intermediate_size"],
        max_context=config.get("max_position_embeddings", 2048),
        norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=config.get("rope_theta", 10000.0),
        head_dim=config.get("head_dim") or 0,
        qkv_bias=arch == "qwen2" or bool(config.get("attention_bias")),
        tie_embeddings=bool(config.get("tie_word_embeddings", arch == "qwen2")),
        rope=rope,
    )


def _llama3_factors(config: dict, scaling: dict) -> list[float]:
    """Llama 3.1 smooths between scaled and unscaled frequencies; GGUF stores the same factors."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = config.get("rope_theta", 10000.0)
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        freq = theta ** (-i / head_dim)
        wavelen = 2 * np.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return out


def load_hf_dir(path: Path, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    cfg_file = path / "config.json"
    files = sorted(path.glob("*.safetensors"))
    if not cfg_file.is_file() or not files:
        raise PairlineError(f"{path} is not an HF model directory: it needs config.json and *.safetensors")
    try:
        cfg = hf_config(json.loads(cfg_file.read_text()))
    except (KeyError, json.JSONDecodeError) as err:
        raise PairlineError(f"{cfg_file} is not a usable model config ({err})") from err
    state = {}
    for file in files:
        for name, tensor in load_file(str(file)).items():
            ours = _rename(name, _HF_RE)
            if ours is not None:
                state[ours] = tensor.to(dtype)
    _check_complete(cfg, state, str(path))
    return cfg, state


def _check_complete(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str) -> None:
    needed = ["tok_embeddings.weight", "norm.weight"] + ([] if cfg.tie_embeddings else ["output.weight"])
    for i in range(cfg.n_layers):
        for part in (
            "attention_norm",
            "ffn_norm",
            "attention.wq",
            "attention.wk",
            "attention.wv",
            "attention.wo",
            "feed_forward.w1",
            "feed_forward.w2",
            "feed_forward.w3",
        ):
            needed.append(f"layers.{i}.{part}.weight")
    missing = [n for n in needed if n not in state]
    if missing:
        raise PairlineError(f"{source} lacks {len(missing)} weights (first: {missing[0]}); the file is incomplete")


def load_weights(path: Path, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A GGUF file or an HF safetensors directory."""
    path = Path(path)
    if path.is_dir():
        return load_hf_dir(path, dtype)
    if path.is_file():
        return load_gguf(path, dtype)
    raise PairlineError(f"no model at {path}")
