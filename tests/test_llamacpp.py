"""The llama.cpp runtime under pairline's loop: agreement with the torch runtime on the same GGUF,
speculation, interrupt latency mid-prefill, sessions, runtime choice and fallback."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from pairline.engine.generate import CancelToken, Engine
from pairline.engine.load import choose_runtime, load_engine
from pairline.engine.runtime import Interrupted
from pairline.engine.runtimes import llamacpp_runtime
from pairline.engine.sampling import SamplingParams
from pairline.errors import PairlineError

from .engine_helpers import pinned_costs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not llamacpp_runtime.available(), reason="llama-cpp-python is not installed"),
]

PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "The capital of France is",
    "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n",
]

CODE = (
    "import math\n\n\ndef greet(name):\n    return 'Hello, ' + name\n\n\n"
    "def area(r):\n    return math.pi * r * r\n\n\nif __name__ == '__main__':\n    print(greet('world'))\n"
)


@pytest.fixture(scope="module")
def llama(smollm2_gguf) -> Engine:
    engine = load_engine(str(smollm2_gguf), runtime="llamacpp", n_ctx=2048)
    engine.step_costs = pinned_costs()  # keep drafting: these tests check verification
    return engine


@pytest.fixture(scope="module")
def reference(smollm2_gguf) -> Engine:
    """The torch runtime in float32 on the dequantized GGUF: the file's math without llama.cpp's
    8-bit activation rounding."""
    return load_engine(str(smollm2_gguf), runtime="torch", dtype="fp32", quant="none", n_ctx=2048)


def test_greedy_agrees_with_torch_or_splits_at_a_near_tie(llama, reference):
    """32 greedy tokens per prompt. Where the two runtimes part, both must see a near-tie there:
    llama.cpp rounds activations to 8 bits, which moves logits by a few tenths, so only a choice
    with a small margin may flip."""
    params = SamplingParams(max_tokens=32, ignore_eos=True)
    for prompt in PROMPTS:
        ids = llama.tokenizer.encode(prompt)
        a = llama.generate(ids, params, speculation="off").run().token_ids
        b = reference.generate(ids, params, speculation="off").run().token_ids
        split = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
        if split is None:
            continue
        prefix = ids + a[:split]
        for engine in (llama, reference):
            engine.reset()
            logits = engine.runtime.forward(prefix, "last")[0]
            engine.reset()
            margin = abs(float(logits[a[split]] - logits[b[split]]))
            assert margin < 0.5, f"{engine.runtime.name}: tokens split at {split} with a margin of {margin:.2f}"


def test_logits_close_to_torch(llama, reference):
    ids = llama.tokenizer.encode(PROMPTS[0])
    llama.reset()
    reference.reset()
    a = llama.runtime.forward(ids, "all")
    b = reference.runtime.forward(ids, "all")
    llama.reset()
    reference.reset()
    corr = np.corrcoef(a.flatten(), b.flatten())[0, 1]
    assert corr > 0.99
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.8


def test_speculation_matches_plain_up_to_near_ties(llama):
    """llama.cpp is not batch-invariant (see LlamaCppRuntime), so greedy with drafts may part from
    plain greedy, but only where the two tokens nearly tie: prompt lookup, the right prediction,
    and a prediction that is wrong in the middle."""
    assert not llama.runtime.batch_invariant
    prompt = llama.chat_prompt([{"role": "user", "content": f"Repeat this file exactly.\n\n```python\n{CODE}```"}])
    params = SamplingParams(max_tokens=96, ignore_eos=True)
    plain = llama.generate(prompt, params, speculation="off").run()
    wrong = plain.text[:40] + "# something else entirely\n" + plain.text[60:]
    for kw in ({"speculation": "prompt_lookup"}, {"prediction": plain.text}, {"prediction": wrong}):
        g = llama.generate(prompt, params, **kw).run()
        assert g.usage.draft_tokens > 0, kw
        split = next((i for i, (a, b) in enumerate(zip(g.token_ids, plain.token_ids, strict=True)) if a != b), None)
        if split is None:
            continue
        llama.reset()
        logits = llama.runtime.forward(prompt + plain.token_ids[:split], "last")[0]
        llama.reset()
        margin = abs(float(logits[plain.token_ids[split]] - logits[g.token_ids[split]]))
        assert margin < 1.0, f"{kw}: parted at token {split} with a margin of {margin:.2f}"


def test_cancel_stops_a_prefill_chunk_under_way(llama):
    """A cancel during a long prompt's prefill stops inside the chunk under way (ggml polls the
    token after every graph node), and the chunks done before it stay cached for the next turn."""
    prompt = llama.tokenizer.encode(CODE * 40)[:1800]
    llama.reset()
    cancel = CancelToken()
    g = llama.generate(prompt, SamplingParams(max_tokens=8), cancel=cancel, speculation="off")
    calls: list[tuple[int, str]] = []
    forward = llama.runtime.forward

    def watched(tokens, rows="last", **kw):
        if len(calls) == 2:
            threading.Timer(0.01, cancel.cancel).start()  # lands early in the third chunk
        calls.append((len(tokens), "started"))
        try:
            out = forward(tokens, rows, **kw)
        except Interrupted:
            calls[-1] = (len(tokens), "interrupted")
            raise
        calls[-1] = (len(tokens), "done")
        return out

    llama.runtime.forward = watched
    try:
        g.run()
    finally:
        del llama.runtime.forward
    chunk = llama.prefill_chunk
    assert calls == [(chunk, "done"), (chunk, "done"), (chunk, "interrupted")]
    assert g.finish_reason == "cancelled" and g.timings.cancel_latency_s is not None
    assert llama.runtime.n_past == 2 * chunk  # the stopped chunk left nothing behind
    again = llama.generate(prompt[: 2 * chunk + 40], SamplingParams(max_tokens=6, ignore_eos=True),
                           speculation="off").run()
    assert again.usage.cached_tokens == 2 * chunk
    llama.reset()
    fresh = llama.generate(prompt[: 2 * chunk + 40], SamplingParams(max_tokens=6, ignore_eos=True),
                           speculation="off").run()
    assert again.token_ids == fresh.token_ids


def test_fork_sessions_keep_their_own_kv(llama):
    other = llama.fork()
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    first = llama.generate(CODE, params, speculation="off").run()
    other.generate("Something else entirely, " * 10, params, speculation="off").run()
    again = llama.generate(CODE, params, speculation="off").run()
    assert again.usage.cached_tokens == len(again.prompt) - 1  # its KV survived the other session's turn
    assert again.token_ids == first.token_ids


def test_runtime_choice(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.delenv("PAIRLINE_RUNTIME", raising=False)
    assert choose_runtime(None, smollm2_gguf, "cpu") == "llamacpp"
    assert choose_runtime("torch", smollm2_gguf, "cpu") == "torch"
    assert choose_runtime(None, tmp_path, "cpu") == "torch"  # an HF directory
    with pytest.raises(PairlineError, match="GGUF"):
        choose_runtime("llamacpp", tmp_path, "cpu")
    with pytest.raises(PairlineError, match="unknown runtime"):
        choose_runtime("vulkan", smollm2_gguf, "cpu")
    monkeypatch.setenv("PAIRLINE_RUNTIME", "torch")
    assert choose_runtime(None, smollm2_gguf, "cpu") == "torch"


def test_missing_build_falls_back_with_one_notice(smollm2_gguf, monkeypatch, capsys):
    import pairline.errors

    monkeypatch.delenv("PAIRLINE_RUNTIME", raising=False)
    monkeypatch.setattr(llamacpp_runtime, "available", lambda: False)
    monkeypatch.setattr(pairline.errors, "_noticed", set())
    assert choose_runtime(None, smollm2_gguf, "cpu") == "torch"
    assert choose_runtime(None, smollm2_gguf, "cpu") == "torch"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torch runtime" in err


def test_quantization_flags_are_refused(smollm2_gguf):
    with pytest.raises(PairlineError, match="quantization"):
        load_engine(str(smollm2_gguf), runtime="llamacpp", quant="int8")


def test_llamacpp_path_never_imports_torch(smollm2_gguf):
    """Importing torch costs ~1.5 s of every command's start; the CLI and a generation on the
    llama.cpp runtime, sampling included, must not pay it (the main job's < 5 s depends on it)."""
    code = (
        "import sys\n"
        "from pairline.cli import build_parser\n"
        "from pairline.engine.load import load_engine\n"
        "from pairline.engine.sampling import SamplingParams\n"
        "build_parser()\n"
        f"e = load_engine({str(smollm2_gguf)!r}, runtime='llamacpp', n_ctx=256)\n"
        "hot = SamplingParams(max_tokens=4, temperature=0.8, top_p=0.9, seed=1)\n"
        "for params in (SamplingParams(max_tokens=4), hot):\n"
        "    e.generate(e.tokenizer.encode('def add(a, b):'), params, prediction='    return a + b').run()\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
