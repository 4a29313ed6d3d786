"""The crash guard's child process (`python -m pairline.engine.guard_child SPEC`): builds one runtime
configuration, exercises the kernels a turn uses, and prints a JSON verdict. A native crash here
kills only this process; engine/guard.py, which spawned it, reads the signal. Apart from guard.py
so the guard, which the runtimes consult for their defaults, imports no runtime itself."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pairline.engine.guard import PROBE_PREFILL, PROBE_STEPS, PROBE_VERIFY, Candidate
from pairline.errors import PairlineError


def open_runtime(path: Path, options: dict, n_ctx: int):
    """Build the runtime a Candidate names (used in the child, with the configuration forced)."""
    if options["runtime"] == "llamacpp":
        from pairline.engine.load import build_llamacpp_runtime

        return build_llamacpp_runtime(path, n_ctx, bool(options["repack"]), options.get("prefill"))
    if options["runtime"] == "torch":
        from pairline.engine.load import build_torch_runtime

        return build_torch_runtime(path, n_ctx, options.get("dtype"), "cpu", options.get("quant"))
    raise PairlineError(f"unknown runtime {options['runtime']!r}")


def _resolve(target: str):
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def probe(runtime) -> dict:
    """Exercise the kernels a turn uses (a prefill chunk, a verify call, decode steps) and time them."""
    import numpy as np

    vocab = runtime.vocab_size
    tokens = [(7919 * i + 13) % vocab for i in range(PROBE_PREFILL + PROBE_VERIFY + PROBE_STEPS)]
    half = PROBE_PREFILL // 2
    chunks, outs = [], []  # two prefill-shaped calls; the faster counts, as a check may share the cores
    for start, rows in ((0, "none"), (half, "last")):
        t0 = time.perf_counter()
        outs.append(runtime.forward(tokens[start : start + half], rows))
        chunks.append(time.perf_counter() - t0)
    outs = outs[1:]
    outs.append(runtime.forward(tokens[PROBE_PREFILL : PROBE_PREFILL + PROBE_VERIFY], "all"))
    steps = []
    for t in tokens[PROBE_PREFILL + PROBE_VERIFY :]:
        t1 = time.perf_counter()
        outs.append(runtime.forward([t], "last"))
        steps.append(time.perf_counter() - t1)
    if not all(o is not None and np.isfinite(o).all() for o in outs):
        return {"ok": False, "reason": "logits are not finite"}
    return {"ok": True, "prefill_tok_s": round(half / min(chunks), 1),
            "step_ms": round(1000 * sorted(steps)[len(steps) // 2], 2)}


def _child(spec: dict) -> int:
    candidate = Candidate(**spec["candidate"])
    t0 = time.perf_counter()
    try:
        runtime = _resolve(candidate.target)(Path(spec["path"]), candidate.options(), PROBE_PREFILL * 4)
        load_s = time.perf_counter() - t0
        result = probe(runtime)
    except Exception as err:  # a refusal the runtime could say in words: still a refusal
        result = {"ok": False, "reason": f"{type(err).__name__}: {str(err)[:200]}"}
        load_s = None
    print(json.dumps({**result, "load_s": load_s and round(load_s, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(json.loads(sys.argv[1])))
