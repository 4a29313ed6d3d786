"""`pairline doctor`: the machine report, and the model report on real weights."""

from __future__ import annotations

import json

import pytest

from pairline.engine import doctor, guard


def test_machine_only_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path))
    report = doctor.diagnose(None)
    assert report.bandwidth_gb_s > 0.5  # any machine reads half a GB/s
    assert report.threads >= 1 and report.cpu["cores"] >= 1
    assert set(report.cpu["flags"].split()) <= set(doctor.INTERESTING_FLAGS)
    assert report.checks == [] and report.model == ""


def test_gguf_tensor_sizes_match_the_file(smollm2_gguf):
    sizes = doctor.gguf_tensor_bytes(smollm2_gguf)
    assert len(sizes) == 2 + 30 * 9  # embeddings and final norm (the output projection is tied), 9 a layer
    total = sum(sizes.values())
    assert 0.9 * smollm2_gguf.stat().st_size < total < smollm2_gguf.stat().st_size
    # tied output projection: a step reads the embedding table whole
    assert doctor.weight_bytes_per_token(smollm2_gguf) == total


@pytest.mark.slow
def test_doctor_on_the_real_small_model(smollm2_gguf, tmp_path, monkeypatch, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (README's llamacpp extra)")
    monkeypatch.setenv("PAIRLINE_CACHE", str(tmp_path))
    monkeypatch.setattr("pairline.models.fetch.resolve", lambda name: smollm2_gguf)
    from pairline.cli import main

    assert main(["doctor", "--model", "smollm2-135m", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["configuration"].startswith("llama.cpp (weight repack")
    assert set(report["phases"]) == {"prefill", "verify", "decode"}
    assert report["decode_tok_s"] > 0 and report["fraction_of_limit"] > 0
    assert report["limit_tok_s"] == pytest.approx(report["bandwidth_gb_s"] * 1e9 / report["weight_bytes_per_token"],
                                                  rel=0.01)
    labels = {c["configuration"] for c in report["checks"]}
    expected = {guard.Candidate("llamacpp", repack=True).label, guard.Candidate("llamacpp", repack=False).label}
    if guard.bf16_hardware():  # bf16 hardware: the split configuration (torch prefill) is checked too
        expected.add(guard.Candidate("llamacpp", repack=False, prefill="torch").label)
    assert labels == expected
    assert all(c["this_cpu"] for c in report["checks"])
    # --recheck forgets this model's verdicts and checks again
    assert main(["doctor", "--model", "smollm2-135m", "--recheck"]) == 0
    out = capsys.readouterr().out
    assert "% of it" in out and f"checked on this machine ({len(expected)}" in out
