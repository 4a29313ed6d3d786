"""The CUDA runtime (runtimes/cuda_runtime.py). On the CPU: its graph-free path under the runtime
contract, its numerics against TorchRuntime, and the graph bookkeeping with capture mocked. On a
GPU (skipped without CUDA; docs/gpu.md has the command): graphs against eager, GPU against CPU,
lossless speculation."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pairline.engine.generate import Engine
from pairline.engine.runtime import ContextFull
from pairline.engine.runtimes import cuda_model as cm
from pairline.engine.runtimes.cuda_model import Int4Linear, Int8Linear, quantize
from pairline.engine.runtimes.cuda_runtime import CudaRuntime, StepPolicy, plan_step
from pairline.engine.runtimes.torch_model import Linear
from pairline.engine.runtimes.torch_runtime import TorchRuntime
from pairline.engine.sampling import SamplingParams
from pairline.errors import PairlineError

from . import engine_helpers
from .engine_helpers import random_state, tiny_config

# The contract suite, run here on this runtime's variants through the `runtime` fixture below.
from .test_runtime_contract import (  # noqa: F401
    TOKENS,
    test_chunked_equals_whole,
    test_context_full,
    test_fork_has_its_own_kv,
    test_is_a_runtime,
    test_rows_and_shapes,
    test_truncate_rolls_back_exactly,
    test_verify_rows_equal_decode_steps,
)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
# The Triton split-KV kernel runs on a GPU, or on the CPU under Triton's interpreter
# (TRITON_INTERPRET=1; it has no bf16 matmul, so those runs use float32 weights).
TRITON = cm.triton is not None and (CUDA or os.environ.get("TRITON_INTERPRET") == "1")
needs_triton = pytest.mark.skipif(not TRITON, reason="needs triton, and CUDA or TRITON_INTERPRET=1")
TRITON_DTYPE = torch.bfloat16 if CUDA else torch.float32


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One torch thread: these tests run many small ops, and on a loaded 2-core machine every
    OpenMP barrier waits on a descheduled thread (seen: 3 s per SmolLM2 step instead of 0.2)."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("PAIRLINE_THREADS", "1")  # TorchRuntime sets its own count from this
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeGraph:
    """Stands in for a captured CUDA graph: replay reruns the captured step eagerly."""

    def __init__(self, step):
        self.step = step
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        self.step()


class FakeCapture:
    """A capture function for CudaRuntime(capture=...): records what was captured, and when."""

    def __init__(self):
        self.graphs: list[FakeGraph] = []

    def __call__(self, step, pool):
        graph = FakeGraph(step)
        self.graphs.append(graph)
        return graph, pool or "pool"


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)  # runtimes return numpy logits
    assert a.shape == b.shape and torch.isfinite(a).all()
    return float((a - b).norm() / b.norm())


def _close(a, b, tol: float = 0.02) -> None:
    """Close as bf16 runs go: relative error over the whole tensor (a single logit near zero can
    differ by more than any elementwise rtol), and finite."""
    err = _rel(a, b)
    assert err < tol, f"relative error {err:.4f} >= {tol}"


def _tiny(arch: str = "qwen2", vocab: int = 512, n_ctx: int = 64, seed: int = 0, device: str = "cpu", **kw):
    cfg = tiny_config(arch, vocab=vocab)
    return CudaRuntime(cfg, random_state(cfg, seed), n_ctx=n_ctx, device=device, **kw)


def _smollm2(n_ctx: int = 64, **kw) -> tuple[CudaRuntime, TorchRuntime, TorchRuntime]:
    """SmolLM2 on this runtime's CPU path, on the bf16 TorchRuntime, and on a float32 TorchRuntime."""
    from pairline.engine.load import load_state
    from pairline.models.fetch import pull

    cfg, state = load_state(pull("smollm2-135m", progress=False), torch.bfloat16)
    f32 = TorchRuntime(cfg, {k: v.float() for k, v in state.items()}, n_ctx=n_ctx, dtype=torch.float32)
    return CudaRuntime(cfg, state, n_ctx=n_ctx, device="cpu", **kw), TorchRuntime(cfg, state, n_ctx=n_ctx), f32


RUNTIMES = [
    pytest.param(lambda: _tiny(), id="cuda-eager-exact"),
    pytest.param(lambda: _tiny(policy=StepPolicy.fast()), id="cuda-eager-fast"),
    pytest.param(lambda: _tiny(policy=StepPolicy(attention="sdpa")), id="cuda-eager-sdpa"),
    # on the GPU (graphs captured for real). The Triton kernel only there: under the CPU interpreter
    # the weights are float32, whose CPU matmuls are not row-invariant, so the bit-exact checks
    # would fail for reasons that are not the kernel's. int8 uncompiled: one compile per test is slow
    pytest.param(lambda: _tiny(device="cuda"), id="gpu-exact", marks=needs_cuda),
    pytest.param(lambda: _tiny(device="cuda", policy=StepPolicy(attention="sdpa")), id="gpu-sdpa", marks=needs_cuda),
    pytest.param(lambda: _tiny(policy=StepPolicy(attention="triton"), device="cuda"), id="gpu-triton",
                 marks=[needs_cuda, needs_triton]),
    pytest.param(lambda: _tiny(device="cuda", quant="int8", compile=False), id="gpu-int8", marks=needs_cuda),
    pytest.param(lambda: _tiny(device="cuda", quant="int4", compile=False), id="gpu-int4", marks=needs_cuda),
    pytest.param(lambda: _tiny(graphs=True, capture=FakeCapture()), id="cuda-mocked-graphs"),
    pytest.param(lambda: _tiny(quant="int8"), id="cuda-eager-int8"),
    pytest.param(lambda: _tiny(quant="int4"), id="cuda-eager-int4"),
]


@pytest.fixture(params=RUNTIMES)
def runtime(request) -> CudaRuntime:
    return request.param()


# ---------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", False), ("qwen2", True)])
def test_static_and_prefill_paths_match_torch_runtime(arch, tied):
    """Same weights, same positions: the static-shape step, the SDPA prefill and the reference
    row-by-row model agree to bf16 rounding, in prefill rows, verify rows and decode steps."""
    cfg = tiny_config(arch, vocab=512, tie_embeddings=tied)
    state = random_state(cfg, seed=3)
    ref = TorchRuntime(cfg, dict(state), n_ctx=128)
    rt = CudaRuntime(cfg, dict(state), n_ctx=128, device="cpu")
    prompt = [(7 * i + 3) % 512 for i in range(40)]  # 40 > 33 rows: the prefill path
    _close(rt.forward(prompt, "all"), ref.forward(prompt, "all"))
    verify = [11, 22, 33, 44, 55]  # the static path, padded to 33 rows
    _close(rt.forward(verify, "all"), ref.forward(verify, "all"))
    for t in (9, 8, 7):
        _close(rt.forward([t]), ref.forward([t]))
    assert rt.n_past == ref.n_past == 48


def test_static_attention_kernels_agree():
    """The two ways a static step can attend (matmul + masked softmax, fused masked SDPA)."""
    a, b = _tiny(n_ctx=64), _tiny(n_ctx=64, policy=StepPolicy(attention="sdpa"))
    for rt in (a, b):
        rt.forward(TOKENS * 3, "none")
    _close(b.forward(TOKENS[:5], "all"), a.forward(TOKENS[:5], "all"), tol=0.01)
    with pytest.raises(ValueError):
        _tiny(policy=StepPolicy(attention="flash"))
    if cm.triton is None:
        with pytest.raises(ValueError):
            _tiny(policy=StepPolicy(attention="triton"))


@needs_triton
@pytest.mark.parametrize("rows,kv_len", [(1, 600), (5, 600), (33, 600), (3, 2048)])
def test_split_kv_attention_matches_masked_softmax(rows, kv_len):
    """The Triton kernel against plain masked attention, positions spread over several splits."""
    dev = "cuda" if CUDA else "cpu"
    torch.manual_seed(rows)
    K, G, D = 2, 3, 16
    k, v = (torch.randn(K, 2049, D, device=dev).to(TRITON_DTYPE) for _ in range(2))
    pos = torch.tensor([min(90 + 131 * i, kv_len - 1) for i in range(rows)], device=dev)
    q = torch.randn(K, G * rows, D, device=dev).to(TRITON_DTYPE)
    out = cm.split_kv_attention(q, k, v, pos, kv_len, 0.25)
    allowed = (torch.arange(kv_len, device=dev)[None] <= pos[:, None]).repeat(G, 1)
    scores = (torch.bmm(q.float(), k[:, :kv_len].float().transpose(1, 2)) * 0.25).masked_fill(~allowed, float("-inf"))
    expect = torch.bmm(torch.softmax(scores, dim=-1), v[:, :kv_len].float())
    _close(out, expect, tol=1e-2 if CUDA else 1e-5)


@needs_triton
def test_triton_static_steps_match_matmul():
    """The runtime with the kernel in its static steps, against the matmul attention."""
    kw = dict(n_ctx=700, dtype=TRITON_DTYPE, device="cuda" if CUDA else "cpu")
    a, b = _tiny(**kw), _tiny(policy=StepPolicy(attention="triton"), **kw)
    prompt = [(7 * i + 1) % 512 for i in range(300)]  # past the first 256-key split
    for rt in (a, b):
        rt.forward(prompt, "none")
    _close(b.forward(TOKENS[:5], "all"), a.forward(TOKENS[:5], "all"), tol=0.02 if CUDA else 1e-4)
    _close(b.forward([9]), a.forward([9]), tol=0.02 if CUDA else 1e-4)


def test_split_sizes_fill_the_gpu_and_stay_fixed_per_length():
    assert cm.split_size(1000) == 256 and cm.split_size(32768) == 1024 and cm.split_size(8192) == 256
    assert all(cm.split_size(n) & (cm.split_size(n) - 1) == 0 for n in (300, 5000, 20000))


def test_prefill_after_a_prefix_uses_lower_right_causal():
    """A chunk after cached positions (start > 0) sees the prefix and its own earlier rows."""
    rt = _tiny(n_ctx=128)
    tokens = [(5 * i + 1) % 512 for i in range(90)]
    whole = rt.forward(tokens, "all")
    rt.truncate(0)
    rt.forward(tokens[:50], "none")
    tail = rt.forward(tokens[50:], "all")  # 40 rows: prefill path with a 50-position prefix
    _close(tail, whole[50:], tol=0.01)


@pytest.mark.slow
def test_smollm2_matches_torch_runtime():
    """Real weights, against a float32 TorchRuntime: this path is as close to it as the bf16
    TorchRuntime is (over 30 bf16 layers both drift by a few percent), and picks the same greedy
    token wherever the float32 model is not near a tie. (The contract suite runs on the tiny
    variants only: on a CPU without bf16 hardware SmolLM2's padded steps are slow.)"""
    rt, ref, f32 = _smollm2(n_ctx=96, policy=StepPolicy.fast())  # one row a step: the same function, cheaper
    tok, errs, ref_errs = 400, [], []
    for step in range(12):
        tokens = [1, *range(300, 340)] if step == 0 else [tok]  # the prefill path, then decode steps
        mine, theirs, exact = rt.forward(tokens), ref.forward(tokens), f32.forward(tokens)
        errs.append(_rel(mine, exact))
        ref_errs.append(_rel(theirs, exact))
        top2 = torch.as_tensor(exact[0]).topk(2).values
        if float(top2[0] - top2[1]) > 0.5:
            assert int(mine.argmax()) == int(exact.argmax()), step
        tok = int(exact.argmax())
    # per step the two bf16 runs wander apart (one step's 9% against another's 3%), so compare sums
    assert sum(errs) < 1.5 * sum(ref_errs) and max(errs) < 0.25, (errs, ref_errs)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_weights_stay_close(quant):
    base, q = _tiny(n_ctx=64), _tiny(n_ctx=64, quant=quant)
    x, y = base.forward(TOKENS, "all"), q.forward(TOKENS, "all")
    err = np.linalg.norm(x - y) / np.linalg.norm(x)
    assert err < (0.03 if quant == "int8" else 0.2)


def test_quantize_swaps_what_fits():
    cfg = tiny_config("qwen2", vocab=512, tie_embeddings=True)
    rt = CudaRuntime(cfg, random_state(cfg), n_ctx=32, device="cpu")
    linears = sum(isinstance(m, Linear) for m in rt.model.modules())
    assert quantize(rt.model, "int8") == linears  # the tied output projection gets its own copy
    assert isinstance(rt.model.output, Int8Linear) and rt.model.tok_embeddings.weight.dtype == torch.bfloat16
    cfg = tiny_config("llama", vocab=512, dim=48, n_heads=4, n_kv_heads=2, ffn_dim=128)
    rt = CudaRuntime(cfg, random_state(cfg), n_ctx=32, device="cpu", quant="int4")
    kinds = {type(m).__name__ for m in rt.model.modules()}
    assert "Int4Linear" in kinds and "Linear" in kinds  # in=48 does not fit the packed kernel: left bf16
    assert all(m.weight.dtype == torch.uint8 for m in rt.model.modules() if isinstance(m, Int4Linear))


# ---------------------------------------------------------------------------------- bookkeeping


def test_plan_step_shapes():
    exact, fast = StepPolicy(), StepPolicy.fast()
    assert plan_step(0, 1, 4096, exact) == (33, 4096)  # decode: padded, whole cache
    assert plan_step(900, 33, 4096, exact) == (33, 4096)  # the widest verify: the same shape
    assert plan_step(0, 34, 4096, exact) is None  # wider: a prefill chunk
    assert exact.exact_rows == 33 and fast.exact_rows == 0
    assert plan_step(0, 1, 4096, fast) == (1, 256)
    assert plan_step(255, 1, 4096, fast) == (1, 256)  # positions 0..255
    assert plan_step(256, 1, 4096, fast) == (1, 512)
    assert plan_step(250, 9, 4096, fast) == (9, 512)
    assert plan_step(4000, 5, 4096, fast) == (5, 4096)  # never past the cache
    assert plan_step(0, 32, 4096, fast) == (32, 256) and plan_step(0, 33, 4096, fast) is None


def test_graphs_are_captured_lazily_once_per_shape():
    cap = FakeCapture()
    rt = _tiny(n_ctx=1024, graphs=True, capture=cap, policy=StepPolicy.fast())
    assert cap.graphs == []  # nothing captured up front
    rt.forward(list(range(1, 100)), "none")  # a prefill chunk: eager, no graph
    assert cap.graphs == []
    rt.forward([5])
    rt.forward([6])
    rt.forward([7, 8, 9], "all")
    rt.truncate(101)
    rt.forward([8, 9, 10], "all")
    assert sorted(rt.graphs.graphs) == [(1, 256), (3, 256)] and len(cap.graphs) == 2
    assert rt.graphs.replays == 4 and [g.replays for g in cap.graphs] == [2, 2]
    rt.forward(list(range(1, 152)), "none")  # a prefill chunk up to position 254
    rt.forward([1, 2])  # positions 255 and 256: the next attention length
    assert (2, 512) in rt.graphs.graphs and rt.graphs.captures == 3

    exact = FakeCapture()
    rt = _tiny(n_ctx=1024, graphs=True, capture=exact)
    for width in (1, 4, 33, 1, 9):
        rt.forward(list(range(1, width + 1)), "all")
    assert list(rt.graphs.graphs) == [(33, 1024)] and len(exact.graphs) == 1  # decode and verify share one


def test_mocked_graphs_give_the_eager_results():
    eager, graphed = _tiny(), _tiny(graphs=True, capture=FakeCapture())
    for rt in (eager, graphed):
        rt.forward(TOKENS[:8], "none")
    assert np.array_equal(eager.forward(TOKENS[8:11], "all"), graphed.forward(TOKENS[8:11], "all"))
    assert np.array_equal(eager.forward([3]), graphed.forward([3]))


def test_rollback_leaves_no_trace_in_captured_buffers():
    """A rejected draft writes KV (and the pad rows write the trash slot); after truncate, the next
    steps give exactly what a runtime that never saw the draft gives."""
    cap = FakeCapture()
    rt, clean = _tiny(graphs=True, capture=cap), _tiny(graphs=True, capture=FakeCapture())
    for r in (rt, clean):
        r.forward(TOKENS[:6], "none")
    rt.forward([6, 400, 401, 402, 403], "all")  # a verify step whose drafts are all rejected
    rt.truncate(7)
    clean.forward([6], "none")
    assert np.array_equal(rt.forward([77, 78], "all"), clean.forward([77, 78], "all"))
    assert np.array_equal(rt.forward([5]), clean.forward([5]))
    assert len(cap.graphs) == 1


def test_pad_rows_write_only_the_trash_slot():
    rt = _tiny(n_ctx=32)
    rt.forward([1, 2, 3], "none")  # 3 real rows, 30 pad rows
    for layer in rt.model.layers:
        k = layer.attention.kv.k  # [K, S + 1, D]
        assert k[:, :3].abs().sum() > 0 and k[:, 3:32].abs().sum() == 0 and k[:, 32].abs().sum() > 0


def test_argmax_matches_forward():
    rt = _tiny()
    rt.forward(TOKENS[:5], "none")
    logits = rt.forward(TOKENS[5:9], "all")
    rt.truncate(5)
    assert rt.argmax(TOKENS[5:9], "all").tolist() == logits.argmax(-1).tolist()
    rt.truncate(0)
    wide = rt.forward(TOKENS * 3, "last")  # 36 rows: the prefill path
    rt.truncate(0)
    assert rt.argmax(TOKENS * 3).tolist() == [int(wide.argmax())]
    with pytest.raises(ValueError):
        rt.argmax([1], "none")


def test_greedy_stream_matches_stepping_and_rolls_back():
    rt, ref = _tiny(), _tiny()
    for r in (rt, ref):
        r.forward(TOKENS[:6], "none")
    expect, tok = [], 42
    for _ in range(8):
        tok = int(ref.argmax([tok])[0])
        expect.append(tok)
    assert list(rt.greedy_stream(42, 8)) == expect and rt.n_past == 14
    # stop early: the cache keeps exactly the inputs whose outputs were read
    rt.truncate(6)
    stream = rt.greedy_stream(42, 8)
    got = [next(stream) for _ in range(3)]
    stream.close()
    assert got == expect[:3] and rt.n_past == 9
    ref.truncate(9)
    assert np.array_equal(rt.forward([expect[2]]), ref.forward([expect[2]]))


def test_greedy_stream_stops_at_the_end_of_the_cache():
    rt = _tiny(n_ctx=32)
    rt.forward(list(range(1, 30)), "none")
    assert len(list(rt.greedy_stream(5, 10))) == 3 and rt.n_past == 32
    with pytest.raises(ContextFull):
        list(rt.greedy_stream(5, 1))


def test_fork_gets_its_own_buffers_and_graphs():
    rt = _tiny(graphs=True, capture=FakeCapture())
    rt.forward([1, 2, 3])
    other = rt.fork()
    assert other.graphs is not rt.graphs and other.graphs.graphs == {}
    assert other.model.layers[0].attention.kv.k.data_ptr() != rt.model.layers[0].attention.kv.k.data_ptr()
    assert other.model.output.weight.data_ptr() == rt.model.output.weight.data_ptr()


def test_bad_arguments():
    with pytest.raises(PairlineError):
        _tiny(quant="int3")
    with pytest.raises(PairlineError):
        _tiny(graphs=True)  # real graphs need CUDA
    if not CUDA:
        with pytest.raises(PairlineError):
            _tiny(device="cuda")


class _Tok:
    """Just what the loop needs from a tokenizer when prompts and predictions are token ids."""

    def __init__(self, vocab: int):
        self.vocab_size = vocab
        self.token_bytes = [f"<{i}>".encode() for i in range(vocab)]
        self.stop_ids = frozenset()
        self.family = "qwen2"


def _engine(rt) -> Engine:
    engine = Engine(rt, _Tok(rt.vocab_size), model_name="tiny-cuda", prefill_chunk=64)
    if hasattr(engine_helpers, "pinned_costs"):  # keep drafting on tiny models, as the loop tests do
        engine.step_costs = engine_helpers.pinned_costs()
    return engine


def _greedy(engine, prompt, n=48, **kw):
    engine.reset()
    return engine.generate(prompt, SamplingParams(max_tokens=n, ignore_eos=True), **kw).run()


def _check_speculation_is_lossless(rt) -> None:
    engine = _engine(rt)
    prompt = [(13 * i + 5) % rt.vocab_size for i in range(70)]
    plain = _greedy(engine, prompt, speculation="off")
    ceiling = _greedy(engine, prompt, prediction=plain.token_ids)
    assert ceiling.token_ids == plain.token_ids
    assert ceiling.usage.accepted_prediction_tokens > 0
    wrong = list(plain.token_ids)
    wrong[10:14] = [1, 2, 3, 4]
    assert _greedy(engine, prompt, prediction=wrong).token_ids == plain.token_ids
    assert _greedy(engine, prompt + plain.token_ids + prompt, speculation="prompt_lookup").token_ids == _greedy(
        engine, prompt + plain.token_ids + prompt, speculation="off"
    ).token_ids


def test_engine_speculation_is_lossless_on_the_static_path():
    _check_speculation_is_lossless(_tiny(vocab=512, n_ctx=512, graphs=True, capture=FakeCapture()))


def test_gpu_bench_harness_runs_on_the_cpu(tmp_path):
    """The GPU benchmark's code paths, end to end, on the tiny config (timings are not checked:
    the point is that a device session's first run does not die on a harness bug)."""
    from pairline.bench import gpu

    cfg = gpu.GpuBenchConfig.quick(models=("tiny",), device="cpu", policies=("exact",),
                                   parts=("decode", "ttft", "verify", "edit"), contexts=(64,), ttft_sizes=(40,),
                                   decode_tokens=6, edit_prompt=40, edit_tokens=12, prefill_chunk=32)
    trace = {"edit": {"tasks": [{"name": "t", "prompt_tokens": 30, "engines": {"pairline-torch": {"modes": {
        "prediction": {"steps": [[4, 4], [8, 2], [3, 0]], "completion_tokens": 10},
        "plain": {"completion_tokens": 5}}}}}]}}
    (tmp_path / "trace.json").write_text(__import__("json").dumps(trace))
    cfg.traces = str(tmp_path / "trace.json")
    result = gpu.run_gpu_bench(cfg)
    p = result["models"]["tiny"]["pairline"][0]
    assert "error" not in p, p.get("error")
    d = p["decode"]["64"]
    assert d["loop_tok_s"] > 0 and d["device_tok_s"] > 0 and d["bytes_per_token"]["kv"] == 2 * 2 * 2 * 16 * 64 * 2
    assert p["ttft"]["sizes"]["40"]["ttft_s"] > 0 and set(p["verify_s"]) == {"1", "4"}
    ceiling = p["edit_ceiling"]
    assert ceiling["ceiling"]["identical_to_plain"] and ceiling["ceiling"]["completion_tokens"] == 12
    assert ceiling["ceiling"]["forward_calls"] < ceiling["plain"]["forward_calls"]
    replays = p["edit_traces"]["replays"]
    assert [(r["mode"], r["argmax"]["completion_tokens"]) for r in replays] == [("prediction", 10), ("plain", 5)]
    assert len(gpu.summary_rows(result)) > 1


# ---------------------------------------------------------------------------------- on a GPU


@needs_cuda
@pytest.mark.parametrize(
    "policy",
    [StepPolicy(), StepPolicy.fast(), StepPolicy(attention="sdpa"),
     pytest.param(StepPolicy(attention="triton"), marks=needs_triton)],
    ids=["exact", "fast", "exact-sdpa", "exact-triton"],
)
def test_gpu_graphs_equal_eager(policy):
    eager = _tiny(n_ctx=1024, device="cuda", graphs=False, policy=policy)
    graphed = _tiny(n_ctx=1024, device="cuda", policy=policy)
    prompt = [(3 * i + 1) % 512 for i in range(300)]
    for rt in (eager, graphed):
        rt.forward(prompt, "none")
    a, b, ta, tb = [], [], 7, 7
    for _ in range(40):
        la, lb = eager.forward([ta]), graphed.forward([tb])
        assert np.array_equal(la, lb)
        ta, tb = int(la.argmax()), int(lb.argmax())
        a.append(ta)
        b.append(tb)
    assert a == b and graphed.graphs.captures >= 1


@needs_cuda
def test_gpu_matches_cpu():
    """The CUDA path against the CPU reference runtime: close logits, the same greedy tokens."""
    cfg = tiny_config("qwen2", vocab=512)
    state = random_state(cfg, seed=1)
    gpu = CudaRuntime(cfg, dict(state), n_ctx=512, device="cuda")
    cpu = TorchRuntime(cfg, dict(state), n_ctx=512)
    prompt = [(11 * i + 2) % 512 for i in range(200)]
    _close(gpu.forward(prompt, "last"), cpu.forward(prompt, "last"))
    tg = tc = 9
    for _ in range(32):
        lg, lc = gpu.forward([tg]), cpu.forward([tc])
        _close(lg, lc)
        tg, tc = int(lg.argmax()), int(lc.argmax())
        assert tg == tc


@needs_cuda
def test_gpu_speculation_is_lossless():
    _check_speculation_is_lossless(_tiny(vocab=512, n_ctx=1024, device="cuda"))


@needs_cuda
@pytest.mark.parametrize("attention", ["matmul", "sdpa", pytest.param("triton", marks=needs_triton)])
def test_gpu_verify_rows_equal_decode_steps(attention):
    """The property the exact policy exists for, on the GPU's kernels."""
    rt = _tiny(n_ctx=1024, device="cuda", policy=StepPolicy(attention=attention))
    rt.forward([(i * 7) % 512 for i in range(100)], "none")
    for width in (2, 5, 9, 17, 33):
        batched = rt.forward(list(range(1, width + 1)), "all")
        rt.truncate(100)
        stepped = np.concatenate([rt.forward([t]) for t in range(1, width + 1)])
        rt.truncate(100)
        assert np.array_equal(batched, stepped), width


@needs_cuda
def test_gpu_greedy_stream_equals_stepping():
    rt, ref = _tiny(n_ctx=512, device="cuda"), _tiny(n_ctx=512, device="cuda")
    for r in (rt, ref):
        r.forward(list(range(1, 50)), "none")
    tok, expect = 3, []
    for _ in range(64):
        tok = int(ref.argmax([tok])[0])
        expect.append(tok)
    assert list(rt.greedy_stream(3, 64)) == expect and rt.n_past == 49 + 64


@needs_cuda
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_gpu_quantized_close_to_bf16(quant):
    cfg = tiny_config("qwen2", vocab=512, dim=256, n_heads=4, n_kv_heads=2, ffn_dim=512)
    state = random_state(cfg)
    base = CudaRuntime(cfg, dict(state), n_ctx=256, device="cuda")
    q = CudaRuntime(cfg, dict(state), n_ctx=256, device="cuda", quant=quant)
    x, y = base.forward(TOKENS, "all"), q.forward(TOKENS, "all")
    assert (x - y).norm() / x.norm() < (0.03 if quant == "int8" else 0.2)
