"""The torch runtime's prepared-weights cache: a warm load maps what the first load computed (fused,
int8-quantized weights), and computes exactly what a cold load computes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["int8", "none"])
def test_warm_load_maps_the_prepared_weights_and_matches_cold(smollm2_gguf, tmp_path, monkeypatch, quant):
    from pairline.engine import load

    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path))
    cold = load.build_torch_runtime(smollm2_gguf, 256, "bf16", "cpu", quant)
    prepared = list((tmp_path / "converted").glob(f"*-{quant}-prepared.pt"))
    assert len(prepared) == 1
    warm = load.build_torch_runtime(smollm2_gguf, 256, "bf16", "cpu", quant)
    assert warm.quant == cold.quant == quant
    # every weight tensor of the warm runtime is mapped from the file, 64-byte aligned (torch's int8
    # kernels segfaulted on the 8-byte offsets of tensors mapped from a safetensors file)
    assert all(t.data_ptr() % 64 == 0 for t in warm.prepared_state().values())
    tokens = [(31 * i + 7) % cold.vocab_size for i in range(40)]
    for rt in (cold, warm):
        rt.truncate(0)
    a = np.concatenate([cold.forward(tokens[:36], "last"), cold.forward(tokens[36:], "all")])
    b = np.concatenate([warm.forward(tokens[:36], "last"), warm.forward(tokens[36:], "all")])
    assert np.array_equal(a, b)


def test_a_damaged_prepared_file_is_rebuilt(tmp_path):
    from pairline.engine import load

    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a torch file")
    assert load._read_prepared(bad) == (None, {})
