"""The engines `pairline bench engine` runs side by side, each in its own worker process.

- pairline-llamacpp, pairline-torch: pairline's Engine (its loop, speculation, predicted outputs)
  on each runtime.
- llamacpp, llamacpp-lookup: the raw peer, llama-cpp-python's own `Llama.create_completion`
  (streamed), plain and with its `LlamaPromptLookupDecoding` draft model.
- hf-fp32, hf-bf16: HF transformers' `generate` on the same GGUF, dequantized by transformers.

Every backend answers the same calls (warmup, ttft, decode; edit for all but HF; verify_cost for
pairline) with the same fields, so the parent compares them without knowing which is which.
Timestamps are taken where the caller sees a token: pairline's TokenEvent, llama-cpp-python's
stopping-criteria hook (called once per sampled token, right before the token is yielded), HF's
streamer put()."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from pairline.engine.doctor import configuration_label
from pairline.engine.guard import preferred_repack

# "pairline": whatever load_engine's runtime="auto" runs here (the crash guard's measured choice,
# the split runtime included); the other two pin a runtime
ENGINES = ("pairline", "pairline-llamacpp", "pairline-torch", "llamacpp", "llamacpp-lookup", "hf-fp32", "hf-bf16")
PAIRLINE_ENGINES = ("pairline", "pairline-llamacpp", "pairline-torch")
LLAMACPP_ENGINES = ("pairline-llamacpp", "llamacpp", "llamacpp-lookup")  # need llama-cpp-python
HF_ENGINES = ("hf-fp32", "hf-bf16")
PAIRLINE_EDIT_MODES = ("plain", "prediction", "prompt_lookup", "useless_prediction", "ceiling")
# the edit modes each engine runs: the raw peer has no predicted outputs; each llama.cpp worker is one mode
ENGINE_EDIT_MODES = {
    "pairline": PAIRLINE_EDIT_MODES,
    "pairline-llamacpp": PAIRLINE_EDIT_MODES,
    "pairline-torch": PAIRLINE_EDIT_MODES,
    "llamacpp": ("plain",),
    "llamacpp-lookup": ("prompt_lookup",),
}
LOOKUP_DRAFT_TOKENS = 10  # LlamaPromptLookupDecoding(num_pred_tokens=...), as in llama-cpp-python's docs


def llamacpp_available() -> bool:
    """True when llama-cpp-python imports (its shared library loads)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # a missing or broken build fails in many ways at import
        return False
    return True


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def decode_result(t0: float, stamps: list[float], tokens: list[int], extra: dict | None = None) -> dict:
    """decode tok/s = (N - 1) / (t_N - t_1): the first token's wait (prefill) is TTFT's business."""
    n = len(stamps)
    span = stamps[-1] - stamps[0] if n > 1 else 0.0
    out = {
        "tokens": n,
        "decode_tok_s": (n - 1) / span if span > 0 else None,
        "ttft_s": stamps[0] - t0 if stamps else None,
        "token_ids": tokens,
    }
    out.update(extra or {})
    return out


def _edit_result(t0: float, stamps: list[float], token_ids: list[int], text: str, finish: str | None) -> dict:
    t_last = stamps[-1] if stamps else time.perf_counter()
    n = len(token_ids)
    return {
        "wall_s": t_last - t0,
        "ttft_s": (stamps[0] - t0) if stamps else None,
        "completion_tokens": n,
        "effective_tok_s": n / (t_last - t0) if n else 0.0,
        "finish_reason": finish,
        "token_ids": list(token_ids),
        "text": text,
    }


# ---------------------------------------------------------------------------------------- pairline


class PairlineBackend:
    """pairline's Engine on one runtime (torch or llamacpp), in this (worker) process."""

    def __init__(self, model: str, runtime: str, dtype: str, n_ctx: int, quant: str | None = None):
        import warnings

        warnings.filterwarnings("ignore")
        t0 = time.perf_counter()
        import torch

        from pairline.engine.load import load_engine
        from pairline.engine.sampling import SamplingParams

        self.import_s = time.perf_counter() - t0
        self.SamplingParams = SamplingParams
        cache = conversion_cache_state(model, dtype) if runtime == "torch" else "n/a"
        kw: dict[str, Any] = {}
        if runtime == "torch":
            kw["dtype"] = None if dtype == "auto" else dtype
            if quant and quant != "auto":
                kw["quant"] = quant
        self.engine = load_engine(model, runtime=runtime, n_ctx=n_ctx, **kw)
        rt = self.engine.runtime
        said = rt.describe()
        self.info = {
            "engine": "pairline" if runtime == "auto" else f"pairline-{runtime}",
            "runtime": rt.name,
            "dtype": said["dtype"] or "gguf",
            "quant": said["quant"],
            "load_s": self.engine.load_s,
            "import_s": self.import_s,
            "load_cache": cache,
            "threads": said["threads"] or torch.get_num_threads(),
            "rss_after_load_mb": current_rss_mb(),
            "n_ctx": rt.n_ctx,
            "verify_slope_hint": rt.verify_slope_hint,
            "configuration": configuration_label(rt),  # as the crash guard chose it (pairline doctor lists the checks)
        }

    def set_threads(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # after loading: the torch runtime sets its own count
        if self.info["runtime"] not in ("llamacpp", "split"):  # llama.cpp tunes its own count
            self.info["threads"] = torch.get_num_threads()

    def _stream(self, g) -> list[float]:
        """Iterate a Generation; returns the perf_counter() at which each token arrived."""
        return [time.perf_counter() for ev in g if ev.token_id >= 0]

    def warmup(self, ids: list[int]) -> dict:
        self.engine.reset()
        self.engine.generate(ids, self.SamplingParams(max_tokens=8, ignore_eos=True), speculation="off").run()
        self.engine.generate(ids[:8], self.SamplingParams(max_tokens=4, ignore_eos=True), speculation="off").run()
        self.engine.reset()
        return {}

    def ttft(self, ids: list[int]) -> dict:
        self.engine.reset()  # no prefix reuse
        t0 = time.perf_counter()
        g = self.engine.generate(ids, self.SamplingParams(max_tokens=1, ignore_eos=True), speculation="off")
        stamps = self._stream(g)
        return {"ttft_s": stamps[0] - t0, "engine_ttft_s": g.timings.ttft_s, "prompt_tokens": len(ids)}

    def decode(self, ids: list[int], n: int) -> dict:
        self.engine.reset()
        t0 = time.perf_counter()
        g = self.engine.generate(ids, self.SamplingParams(max_tokens=n, ignore_eos=True), speculation="off")
        stamps = self._stream(g)
        return decode_result(t0, stamps, g.token_ids, extra={"engine_decode_tok_s": g.timings.decode_tokens_per_s})

    def verify_cost(self, ids: list[int], ks: list[int], repeats: int) -> dict:
        """Seconds for one forward of k tokens (all rows' logits, as a verify step does) after a
        context of len(ids), for each k; the cache is rolled back after each. Interleaved repeats."""
        rt = self.engine.runtime
        self.engine.reset()
        for start in range(0, len(ids), 256):
            chunk = ids[start : start + 256]
            rt.forward(chunk, "last" if start + len(chunk) == len(ids) else "none")
        n0 = rt.n_past
        times: dict[int, list[float]] = {k: [] for k in ks}
        for _ in range(repeats + 1):  # the first round warms up each shape
            for k in ks:
                t0 = time.perf_counter()
                rt.forward(ids[n0 - k : n0] if k <= n0 else ids[:k], "all")
                times[k].append(time.perf_counter() - t0)
                rt.truncate(n0)
        self.engine.reset()
        return {str(k): v[1:] for k, v in times.items()}

    def edit(self, ids: list[int], max_tokens: int, mode: str, prediction: list[int] | None) -> dict:
        if mode not in PAIRLINE_EDIT_MODES:
            raise ValueError(f"pairline has no edit mode {mode!r}")
        self.engine.reset()
        params = self.SamplingParams(max_tokens=max_tokens, temperature=0.0)
        speculation = {"plain": "off", "prompt_lookup": "prompt_lookup"}.get(mode, "auto")
        pred = prediction if mode in ("prediction", "useless_prediction", "ceiling") else None
        t0 = time.perf_counter()
        g = self.engine.generate(ids, params, prediction=pred, speculation=speculation)
        stamps = self._stream(g)
        out = _edit_result(t0, stamps, g.token_ids, g.text, g.finish_reason)
        u, tm = g.usage, g.timings
        out.update(
            {
                "accepted_prediction_tokens": u.accepted_prediction_tokens,
                "rejected_prediction_tokens": u.rejected_prediction_tokens,
                "draft_tokens": u.draft_tokens,
                "accepted_draft_tokens": u.accepted_draft_tokens,
                "forward_calls": tm.forward_calls,
                "engine_prefill_s": tm.prefill_s,
                "engine_decode_tok_s": tm.decode_tokens_per_s,
                # (drafted, accepted) per decode/verify call: the acceptance curve
                "steps": [list(s) for s in getattr(g, "steps", [])] if mode != "plain" else [],
            }
        )
        return out


def conversion_cache_state(model: str, dtype: str) -> str:
    """'warm' when pairline's dequantized copy of this GGUF already exists (load maps it), else 'cold'."""
    try:
        from pairline.engine.load import converted_path, parse_dtype
        from pairline.engine.runtimes.torch_runtime import default_dtype
        from pairline.models.fetch import resolve

        path = resolve(model, pull_if_missing=False)
        if path.is_dir():
            return "n/a"
        return "warm" if converted_path(path, parse_dtype(dtype) or default_dtype("cpu")).is_file() else "cold"
    except Exception:
        return "unknown"


# ---------------------------------------------------------------------------------------- llama.cpp


@contextlib.contextmanager
def extra_bufts(on: bool):
    """llama-cpp-python's Llama() has no option for llama.cpp's `use_extra_bufts` (the weight repack):
    hand it default model params with the field set, for the length of one load."""
    import llama_cpp.llama as high_level

    real = high_level.llama_cpp.llama_model_default_params

    def params():
        p = real()
        p.use_extra_bufts = on
        return p

    high_level.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        high_level.llama_cpp.llama_model_default_params = real


def llamacpp_server_missing() -> str | None:
    """Why llama.cpp's own OpenAI server (`python -m llama_cpp.server`) cannot run here, or None."""
    try:
        import llama_cpp.server  # noqa: F401  (its extra: fastapi, sse-starlette, ...)
    except Exception as err:  # missing, or a broken build of llama-cpp-python
        hint = "pip install 'llama-cpp-python[server]'"
        return f"llama.cpp's server is not installed ({type(err).__name__}: {err}); {hint}"
    return None


def llamacpp_server_command(gguf: Path, port: int, n_ctx: int, threads: int | None = None,
                            interrupt: bool = True) -> list[str]:
    """The command line of llama.cpp's own OpenAI server on `gguf`, on 127.0.0.1:`port`. It has no
    /health: `/v1/models` answers once it is up. `interrupt` is its `--interrupt_requests` (its
    default, on): a request that comes while an answer streams ends that answer (with `[DONE]`); off,
    it waits its turn (docs/scaling.md: behind the router). The server gets the weight layout
    pairline's own llama.cpp runtime was given by its check: where the repack crashes (AMX,
    docs/engine.md), llama.cpp's plain server would crash on its first request."""
    run = "runpy.run_module('llama_cpp.server', run_name='__main__')"
    head = "import runpy; from pairline.bench.peers import extra_bufts"
    launch = f"{head}\nwith extra_bufts({preferred_repack(Path(gguf))}): {run}"
    return [sys.executable, "-c", launch, "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", str(threads or os.cpu_count() or 2),
            "--interrupt_requests", str(interrupt).lower(), "--verbose", "false"]


class LlamaCppBackend:
    """The raw peer: llama-cpp-python's high-level `Llama`, driven as its users drive it
    (`create_completion(prompt=token ids, temperature=0, stream=True)`), plain or with its own
    prompt-lookup draft model."""

    def __init__(self, model_path: str, n_ctx: int, threads: int | None = None, lookup: bool = False):
        t0 = time.perf_counter()
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self.import_s = time.perf_counter() - t0
        self.llama_cpp = llama_cpp
        self.lookup = lookup
        threads = threads or os.cpu_count() or 1
        # the raw peer gets the weight layout pairline's own llama.cpp runtime was given by its check:
        # where the repack crashes (AMX, docs/engine.md) the peer's plain Llama() would crash too
        self.repack = preferred_repack(Path(model_path))
        t1 = time.perf_counter()
        with extra_bufts(self.repack):
            self.llm = llama_cpp.Llama(
                model_path=model_path,
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
                # its prompt lookup fails on prompts over 512 tokens without every row's logits
                # (shared/cpu-measurements.md); plain decoding needs only the last row
                logits_all=lookup,
                draft_model=LlamaPromptLookupDecoding(num_pred_tokens=LOOKUP_DRAFT_TOKENS) if lookup else None,
            )
        load_s = time.perf_counter() - t1
        self.vocab = self.llm._model.vocab
        self.info = {
            "engine": "llamacpp-lookup" if lookup else "llamacpp",
            "llama_cpp_python": getattr(llama_cpp, "__version__", None),
            "dtype": "gguf",
            "quant": "gguf",
            "load_s": load_s,
            "import_s": self.import_s,
            "threads": threads,
            "logits_all": lookup,
            "repack": self.repack,
            "draft_model": f"LlamaPromptLookupDecoding(num_pred_tokens={LOOKUP_DRAFT_TOKENS})" if lookup else None,
            "rss_after_load_mb": current_rss_mb(),
            "n_ctx": n_ctx,
        }

    def set_threads(self, threads: int) -> None:
        pass  # fixed at load (n_threads)

    def _complete(self, ids: list[int], max_tokens: int) -> tuple[float, list[float], list[int], str, str | None]:
        """One streamed completion from scratch; per-token stamps, token ids, text, finish reason."""
        llama_cpp, llm, vocab = self.llama_cpp, self.llm, self.vocab
        stamps: list[float] = []
        tokens: list[int] = []
        sample = type(llm).sample.__get__(llm)

        # Llama.generate samples each output token once (drafted or not) through self.sample: a thin
        # wrapper there sees every token and its time. (Its stopping-criteria hook is called with
        # the tokens evaluated so far, which lag the sampled one, and once more at the end.)
        def sampled(*args, **kwargs):
            t = sample(*args, **kwargs)
            if not llama_cpp.llama_vocab_is_eog(vocab, t):  # pairline does not count the stop token either
                stamps.append(time.perf_counter())
                tokens.append(int(t))
            return t

        llm.sample = sampled
        llm.reset()  # no prefix reuse: every call prefills its whole prompt
        text, finish = [], None
        try:
            t0 = time.perf_counter()
            for chunk in llm.create_completion(prompt=list(ids), max_tokens=max_tokens, temperature=0.0, stream=True):
                choice = chunk["choices"][0]
                text.append(choice.get("text") or "")
                finish = choice.get("finish_reason") or finish
        finally:
            del llm.sample
        return t0, stamps, tokens, "".join(text), finish

    def warmup(self, ids: list[int]) -> dict:
        self._complete(ids, 8)
        self._complete(ids[:8], 4)
        return {}

    def ttft(self, ids: list[int]) -> dict:
        t0, stamps, _, _, _ = self._complete(ids, 1)
        return {"ttft_s": stamps[0] - t0 if stamps else None, "prompt_tokens": len(ids)}

    def decode(self, ids: list[int], n: int) -> dict:
        t0, stamps, tokens, _, finish = self._complete(ids, n)
        return decode_result(t0, stamps, tokens, extra={"finish_reason": finish, "speculation": self.lookup})

    def edit(self, ids: list[int], max_tokens: int, mode: str, prediction: list[int] | None) -> dict:
        own = "prompt_lookup" if self.lookup else "plain"
        if mode != own:
            raise ValueError(f"this llama.cpp worker runs {own!r}, not {mode!r}")
        t0, stamps, tokens, text, finish = self._complete(ids, max_tokens)
        out = _edit_result(t0, stamps, tokens, text, finish)
        out.update(
            {
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
                "draft_tokens": None,  # llama-cpp-python does not report them
                "accepted_draft_tokens": None,
                "forward_calls": None,
                "steps": [],
            }
        )
        return out


# ---------------------------------------------------------------------------------------- HF


class HFBackend:
    """HF transformers on the same GGUF (dequantized by transformers), greedy, use_cache=True."""

    def __init__(self, model_path: str, dtype: str):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        import warnings

        warnings.filterwarnings("ignore")
        t0 = time.perf_counter()
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
        from transformers.generation.streamers import BaseStreamer

        self.import_s = time.perf_counter() - t0
        transformers.utils.logging.set_verbosity_error()
        with contextlib.suppress(Exception):
            transformers.utils.logging.disable_progress_bar()
        self.torch = torch
        self.BaseStreamer = BaseStreamer
        torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        path = Path(model_path)
        t1 = time.perf_counter()
        if path.is_dir():
            self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
        self.model.eval()
        load_s = time.perf_counter() - t1
        cfg = self.model.generation_config
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else self.model.config.eos_token_id
        self.pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
        linear = next((type(m).__name__ for m in self.model.modules() if "Linear" in type(m).__name__), None)
        self.info = {
            "engine": f"hf-{dtype}",
            "transformers": transformers.__version__,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "load_s": load_s,
            "import_s": self.import_s,
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "linear_module": linear,
            "threads": torch.get_num_threads(),
            "rss_after_load_mb": current_rss_mb(),
        }

    def set_threads(self, threads: int) -> None:
        self.torch.set_num_threads(threads)
        self.info["threads"] = self.torch.get_num_threads()

    def _generate(self, ids: list[int], n: int, streamer=None, min_new: int | None = None):
        torch = self.torch
        x = torch.tensor([ids], dtype=torch.long)
        kw = {"min_new_tokens": min_new} if min_new else {}
        with torch.inference_mode():
            return self.model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=self.pad,
                streamer=streamer,
                **kw,
            )

    def warmup(self, ids: list[int]) -> dict:
        self._generate(ids, 8, min_new=8)
        self._generate(ids[:8], 4, min_new=4)
        return {}

    def ttft(self, ids: list[int]) -> dict:
        t0 = time.perf_counter()
        self._generate(ids, 1)
        return {"ttft_s": time.perf_counter() - t0, "prompt_tokens": len(ids)}

    def decode(self, ids: list[int], n: int) -> dict:
        stamps: list[float] = []

        class Stamps(self.BaseStreamer):
            def put(self, value):  # the first call carries the prompt, then one call per token
                stamps.append(time.perf_counter())

            def end(self):
                pass

        t0 = time.perf_counter()
        out = self._generate(ids, n, streamer=Stamps(), min_new=n)
        tokens = out[0, len(ids) :].tolist()
        return decode_result(t0, stamps[1:], tokens)


def make_backend(name: str, kwargs: dict):
    if name in PAIRLINE_ENGINES:
        return PairlineBackend(**kwargs)
    if name in ("llamacpp", "llamacpp-lookup"):
        return LlamaCppBackend(**kwargs)
    if name in HF_ENGINES:
        return HFBackend(**kwargs)
    raise ValueError(f"unknown engine {name!r}")
