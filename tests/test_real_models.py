"""pairline's model against a reference nobody here wrote (HF transformers loading the same GGUF),
and lossless speculation on real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pairline.engine.generate import Engine
from pairline.engine.load import load_state
from pairline.engine.runtimes.torch_runtime import TorchRuntime
from pairline.engine.sampling import SamplingParams
from pairline.engine.tokenizer import Tokenizer

from .engine_helpers import pinned_costs

pytestmark = pytest.mark.slow

PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The capital of France is",
    "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n<|im_start|>assistant\n",
]

EDIT_FILE = '''import math


def area(radius):
    return math.pi * radius ** 2


def greet(name):
    return "Hello, " + name


def main():
    print(area(2.0))
    print(greet("world"))


if __name__ == "__main__":
    main()
'''


def _hf(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.eval()


def _ours(path, dtype=torch.float32, n_ctx=2048) -> Engine:
    cfg, state = load_state(path, dtype)
    return Engine(TorchRuntime(cfg, state, n_ctx=n_ctx, dtype=dtype), Tokenizer.from_gguf(path))


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """Plain argmax steps with HF's own KV cache; no end-of-text handling on either side."""
    out, past, step = [], None, torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(n):
            res = model(step, past_key_values=past, use_cache=True)
            past = res.past_key_values
            out.append(int(res.logits[0, -1].argmax()))
            step = torch.tensor([[out[-1]]])
    return out


def _compare(path, check_tokens: int):
    hf = _hf(path)
    ours = _ours(path)
    for prompt in PROMPTS:
        ids = ours.tokenizer.encode(prompt)
        with torch.inference_mode():
            ref = hf(torch.tensor([ids])).logits[0].float()  # [n, V]
        ours.reset()
        got = ours.runtime.forward(ids, "all")
        ours.cached = list(ids)
        # same weights, float32 both sides: only summation order differs
        ref = ref.numpy()
        err = np.abs(got - ref).max()
        assert err < 2e-2, f"max |logit difference| {err:.4f} on {prompt!r}"
        assert np.array_equal(got.argmax(-1), ref.argmax(-1))
        want = _hf_greedy(hf, ids, check_tokens)
        ours.reset()
        g = ours.generate(ids, SamplingParams(max_tokens=check_tokens, ignore_eos=True), speculation="off").run()
        assert g.token_ids == want, f"greedy continuation differs on {prompt!r}"


def test_smollm2_matches_hf_transformers(smollm2_gguf):
    _compare(smollm2_gguf, check_tokens=32)


def test_qwen05_matches_hf_transformers(qwen05_gguf):
    _compare(qwen05_gguf, check_tokens=32)


def test_bf16_close_to_float32(smollm2_gguf):
    f32 = _ours(smollm2_gguf, torch.float32)
    b16 = _ours(smollm2_gguf, torch.bfloat16)
    ids = f32.tokenizer.encode(PROMPTS[0])
    a = f32.runtime.forward(ids, "all")
    b = b16.runtime.forward(ids, "all")
    corr = np.corrcoef(a.flatten(), b.flatten())[0, 1]
    assert corr > 0.995


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf) -> Engine:
    from pairline.engine.load import load_engine

    # the torch runtime, which is batch-invariant: llama.cpp's speculation is checked in test_llamacpp.py
    engine = load_engine(str(smollm2_gguf), runtime="torch", n_ctx=2048)
    engine.step_costs = pinned_costs()  # these tests check that verification is lossless: keep drafting
    return engine


def _edit_prompt(engine: Engine) -> list[int]:
    return engine.chat_prompt([
        {"role": "user", "content": "Rename greet to welcome in this file and output the whole file.\n\n"
                                    f"```python\n{EDIT_FILE}```"},
    ])


def test_speculation_lossless_on_real_weights(smollm2):
    prompt = _edit_prompt(smollm2)
    params = SamplingParams(max_tokens=160, ignore_eos=True)
    smollm2.reset()
    plain = smollm2.generate(prompt, params, speculation="off").run()
    smollm2.reset()
    lookup = smollm2.generate(prompt, params, speculation="prompt_lookup").run()
    assert lookup.token_ids == plain.token_ids
    assert lookup.usage.accepted_draft_tokens > 0
    # the file as the prediction, partly wrong: the model's answer wraps and may change it
    smollm2.reset()
    predicted = smollm2.generate(prompt, params, prediction=f"```python\n{EDIT_FILE}```").run()
    assert predicted.token_ids == plain.token_ids
    assert predicted.usage.accepted_prediction_tokens > 0
    # the model's own answer, with a line changed in the middle
    lines = plain.text.splitlines(keepends=True)
    lines[len(lines) // 2] = "    x = 'something else entirely'\n"
    smollm2.reset()
    realigned = smollm2.generate(prompt, params, prediction="".join(lines)).run()
    assert realigned.token_ids == plain.token_ids
    assert realigned.usage.rejected_prediction_tokens > 0
    assert realigned.usage.accepted_prediction_tokens > len(plain.token_ids) // 2
