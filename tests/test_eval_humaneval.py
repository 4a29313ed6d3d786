"""pairline eval humaneval: the dataset, reading answers, the sandboxed checker, the plot, the command."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pairline.assistant.client import session_url
from pairline.bench import humaneval as he
from pairline.bench.common import write_json
from pairline.bench.plot import load_results, plot, wilson
from tests.test_router_live import free_port, start_serve, stop, wait_healthy

PROBLEMS = he.load_problems()
P0 = PROBLEMS[0]  # has_close_elements, with `from typing import List`
P32 = PROBLEMS[32]  # find_zero, after a helper `poly` the solution needs
ROOT = Path(__file__).resolve().parents[1]

# a correct has_close_elements, as a model would write it
BODY0 = """\
    for i in range(len(numbers)):
        for j in range(i + 1, len(numbers)):
            if abs(numbers[i] - numbers[j]) < threshold:
                return True
    return False
"""


def passes(program: str, problem=P0, timeout_s: float = 10.0) -> he.CheckResult:
    return he.run_check(problem, program, timeout_s)


# --------------------------------------------------------------------------- dataset


def test_dataset_has_164_problems_with_their_fields():
    assert len(PROBLEMS) == 164
    assert PROBLEMS[0].task_id == "HumanEval/0" and PROBLEMS[163].task_id == "HumanEval/163"
    for p in PROBLEMS:
        assert p.prompt and p.test and p.canonical_solution
        assert f"def {p.entry_point}(" in p.prompt
        assert "def check(candidate)" in p.test


def test_select_by_limit_index_and_id():
    assert [p.task_id for p in he.select(PROBLEMS, 3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    picked = he.select(PROBLEMS, None, ["0", "5", "HumanEval/12"])
    assert [p.task_id for p in picked] == ["HumanEval/0", "HumanEval/5", "HumanEval/12"]
    with pytest.raises(he.PairlineError, match="unknown problem"):
        he.select(PROBLEMS, None, ["HumanEval/999"])
    with pytest.raises(he.PairlineError, match="at least 1"):
        he.select(PROBLEMS, 0)


# --------------------------------------------------------------------------- reading answers


def full_def_answer(problem=P0, body=BODY0, prose: str = "", after: str = "") -> str:
    return f"{prose}```python\n{problem.prompt.rstrip()}\n{body}```\n{after}"


def test_full_def_in_a_block_passes():
    program = he.extract_program(full_def_answer(prose="Here is the function:\n\n"), P0)
    assert program.startswith("from typing import List")
    assert passes(program).passed


def test_full_def_without_the_imports_gets_the_prompts_preamble():
    answer = "```python\ndef has_close_elements(numbers, threshold):\n" + BODY0 + "```"
    program = he.extract_program(answer, P0)
    assert program.startswith("from typing import List") and passes(program).passed


def test_full_def_keeps_the_prompts_helpers():
    # find_zero's answer calls `poly`, which only the prompt defines
    body = "    lo, hi = -1e3, 1e3\n" \
           "    for _ in range(200):\n" \
           "        mid = (lo + hi) / 2\n" \
           "        if poly(xs, lo) * poly(xs, mid) <= 0:\n" \
           "            hi = mid\n" \
           "        else:\n" \
           "            lo = mid\n" \
           "    return lo\n"
    answer = f"```python\ndef find_zero(xs: list):\n{body}```"
    assert passes(he.extract_program(answer, P32), P32).passed


def test_body_only_continues_the_prompt():
    assert passes(he.extract_program(f"```python\n{BODY0}```", P0)).passed


def test_body_at_column_zero_is_indented():
    flat = "\n".join(line[4:] for line in BODY0.splitlines())
    assert passes(he.extract_program(f"```python\n{flat}\n```", P0)).passed


def test_no_fence_at_all():
    answer = P0.prompt + BODY0
    assert passes(he.extract_program(answer, P0)).passed


def test_an_unclosed_block_cut_by_the_token_budget_is_still_read():
    answer = f"```python\n{P0.prompt}{BODY0}"
    assert passes(he.extract_program(answer, P0)).passed


def test_extra_prose_and_a_second_block_are_ignored():
    example = "\nExample:\n```python\nprint(has_close_elements([1.0], 0.5))\n```\n"
    answer = full_def_answer(prose="Sure!\n", after=example)
    program = he.extract_program(answer, P0)
    assert "print(" not in program and passes(program).passed


def test_the_models_own_test_code_is_dropped():
    body = BODY0 + "\n\n# Test\nassert has_close_elements([1.0, 2.0], 0.5) == True\nprint('ok')\n" \
                   "if __name__ == '__main__':\n    import doctest\n    doctest.testmod()\n"
    program = he.extract_program(full_def_answer(body=body), P0)
    assert "assert has_close" not in program and "doctest" not in program and "__main__" not in program
    assert passes(program).passed


def test_tests_cut_off_by_the_token_budget_leave_the_solution():
    cut = BODY0 + "\n# Check function\ndef check_solution():\n    cases = [\n" \
                  "        ([1.0, 2.0], 0.5, True),\n        ([1.0, "
    program = he.extract_program(f"```python\n{P0.prompt}{cut}", P0)
    assert "check_solution" not in program and passes(program).passed
    # the same for a body-only answer
    program = he.extract_program(f"```python\n{cut}", P0)
    assert "check_solution" not in program and passes(program).passed


def test_a_solution_that_does_not_parse_is_still_a_syntax_failure():
    program = he.extract_program(f"```python\n{P0.prompt}    return (numbers\n```", P0)
    assert passes(program).kind == "syntax"


def test_a_non_python_block_first_is_skipped():
    answer = "```text\nsome output\n```\n" + full_def_answer()
    assert passes(he.extract_program(answer, P0)).passed


def test_answer_complete_waits_for_the_first_python_block_to_close():
    assert not he.answer_complete("Here it is:\n```python\ndef f():\n    return 1\n")
    assert he.answer_complete("Here it is:\n```python\ndef f():\n    return 1\n```")
    assert not he.answer_complete("no code yet")


# --------------------------------------------------------------------------- the checker


def test_canonical_solutions_of_ten_problems_pass():
    for p in PROBLEMS[::17][:10]:
        r = he.run_check(p, p.prompt + p.canonical_solution)
        assert r.passed and r.kind is None, (p.task_id, r)


def test_a_wrong_answer_fails_as_an_assertion():
    r = passes(P0.prompt + "    return False\n")
    assert not r.passed and r.kind == "assertion" and r.message.startswith("AssertionError")


def test_a_crash_fails_as_an_exception():
    r = passes(P0.prompt + "    return numbers[999]\n")
    assert not r.passed and r.kind == "exception" and "IndexError" in r.message


def test_a_syntax_error_fails_as_syntax_without_running():
    r = passes(P0.prompt + "    return (\n")
    assert not r.passed and r.kind == "syntax"


def test_an_infinite_loop_is_stopped_at_the_timeout():
    r = passes(P0.prompt + "    while True:\n        pass\n", timeout_s=1.5)
    assert not r.passed and r.kind == "timeout"
    assert 1.5 <= r.check_s < 8.0


def test_exiting_early_with_status_zero_is_not_a_pass():
    r = passes(P0.prompt + "    return True\nimport sys\nsys.exit(0)\n")
    assert not r.passed and r.kind == "exception"


def test_the_check_cannot_write_outside_its_folder(tmp_path):
    if "no-writes-outside" not in he._protections():
        pytest.skip("this kernel has no Landlock")
    target = tmp_path / "escaped.txt"
    r = passes(P0.prompt + f"    open({str(target)!r}, 'w').write('x')\n" + BODY0)
    assert not r.passed and not target.exists()


# --------------------------------------------------------------------------- a scripted run, the plot


class Scripted:
    """A client that answers from a list (no model): the harness around the model."""

    supports_prefix = False
    supports_stop = False
    supports_ahead = False
    supports_grammar = False
    model_name = "scripted"
    family = "qwen2"
    load_s = 0.0
    n_ctx = None

    def __init__(self, answers: list[str]):
        self.answers = list(answers)
        self.predictions: list[str | None] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def reset(self) -> None:
        pass

    def ahead(self, messages, prefix="") -> None:
        pass

    def describe(self) -> dict:
        return {"runtime": None, "threads": None}

    def stream(self, messages, *, max_tokens, prefix="", prediction=None, stop=(), cancel=None, speculation="auto",
               grammar=None):
        from pairline.assistant.client import Reply
        from pairline.engine.generate import CancelToken

        self.predictions.append(prediction)
        text = self.answers.pop(0)
        reply = Reply(iter(()), cancel or CancelToken())

        def deltas():
            for line in text.splitlines(keepends=True):
                if reply.cancel.cancelled:
                    break
                reply.tokens += 1
                yield line
            reply.finish_reason = "cancelled" if reply.cancel.cancelled else "stop"

        reply.deltas = deltas()
        return reply


def test_a_scripted_run_scores_stops_and_summarizes(tmp_path):
    answers = [full_def_answer(after="\nAnd some more text that is never read.\n"), "```python\n    return 1\n```"]
    client = Scripted(answers)
    cfg = he.EvalConfig(limit=2, client=client, log=lambda m: None)
    result = he.run_eval(cfg)
    recs = result["records"]
    assert [r["passed"] for r in recs] == [True, False] and recs[1]["failure"] == "assertion"
    assert "never read" not in recs[0]["answer"]  # stopped once the code block closed
    assert client.predictions[0] == he.prediction_for(P0)  # the prompt went as prediction
    s = result["summary"]
    assert s["n"] == 2 and s["pass_at_1"] == 50.0 and s["failures"]["assertion"] == 1
    assert result["complete"] and result["loadavg_start"] is not None and result["machine"]["label"]
    path = write_json(result, tmp_path / "r.json")
    png = plot(load_results([path]), tmp_path / "r.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert 400 <= width <= 3000 and 300 <= height <= 2000 and len(data) > 10_000


def test_rescore_checks_saved_answers_again_and_keeps_the_timings(tmp_path):
    client = Scripted([full_def_answer(), "```python\n    return 1\n```"])
    result = he.run_eval(he.EvalConfig(limit=2, client=client, log=lambda m: None))
    result["records"][1]["answer"] = full_def_answer(problem=PROBLEMS[1], body="    return []\n")
    result["records"][0]["passed"] = False  # as if an older extractor had failed it
    out = he.rescore(result)
    assert [r["passed"] for r in out["records"]] == [True, False]
    assert out["records"][0]["wall_s"] == result["records"][0]["wall_s"]
    assert out["rescored"][-1]["changed"] == ["HumanEval/0: fail -> pass"]
    assert out["summary"]["passed"] == 1


def test_a_server_run_is_labelled_with_the_servers_model_and_url():
    client = Scripted(["```python\n    return 1\n```"])
    client.model_name = "smollm2-135m"  # what the server's session reported
    cfg = he.EvalConfig(limit=1, client=client, server="http://127.0.0.1:8000", mode="deep", log=lambda m: None)
    result = he.run_eval(cfg)
    assert result["server"] == "ws://127.0.0.1:8000/v1/responses" and result["mode"] == "deep"
    assert result["model"] == "smollm2-135m" and result["tier"] == "deep"  # the tier the router was asked for
    assert result["settings"]["n_ctx"] is None  # the server's own, unknown here
    assert result["records"][0]["cached_tokens"] == 0


@pytest.mark.parametrize(
    "given, url",
    [
        ("ws://h:1", "ws://h:1/v1/responses"),
        ("http://h:1/", "ws://h:1/v1/responses"),
        ("https://h/v1", "wss://h/v1/responses"),
        ("HTTP://h:1/v1/responses", "ws://h:1/v1/responses"),
        ("wss://h/pre/fix", "wss://h/pre/fix/v1/responses"),
    ],
)
def test_server_url_takes_http_and_ws(given, url):
    assert session_url(given) == url


def test_wilson_interval_is_sane():
    lo, hi = wilson(20, 40)
    assert 30 < lo < 50 < hi < 70
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 100.0


# --------------------------------------------------------------------------- the command


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pairline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tier", "fast"], "unknown tier 'fast'"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--problems", "HumanEval/500"], "unknown problem 'HumanEval/500'"),
        (["--mode", "deep"], "--mode asks a `pairline route` router for a tier; it needs --server"),
        (["--server", "127.0.0.1:8000"], "--server takes http://HOST:PORT or ws://HOST:PORT"),
        (["--server", "ftp://127.0.0.1:8000"], "--server takes http://HOST:PORT or ws://HOST:PORT"),
        (["--server", "http://127.0.0.1:8000", "--model", "smollm2-135m"], "with --server the model is the server's"),
        (["--server", "http://127.0.0.1:8000", "--runtime", "torch"], "with --server the runtime is the server's"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = cli("eval", "humaneval", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_an_unreachable_server_is_one_line_and_exit_2(tmp_path):
    port = free_port()  # nothing listens there
    proc = cli("eval", "humaneval", "--server", f"http://127.0.0.1:{port}", "--limit", "2", "--out", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach pairline serve" in lines[0] and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # no result for a run that never started


def test_plot_of_a_file_that_is_not_a_result_is_one_line(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    proc = cli("eval", "plot", str(bad), "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_real_model_two_problems_through_the_command(tmp_path, smollm2_gguf):
    out = tmp_path / "he.json"
    proc = cli("eval", "humaneval", "--model", "smollm2-135m", "--limit", "2", "--max-tokens", "128",
               "--out", str(out), "--plot", timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["complete"] and data["model"] == "smollm2-135m" and len(data["records"]) == 2
    for r in data["records"]:
        assert r["task_id"] in ("HumanEval/0", "HumanEval/1")
        assert 0 < r["wall_s"] < 60 and 0 < r["tokens"] <= 128 and r["prompt_tokens"] > 50
        assert r["passed"] in (True, False) and (r["passed"] or r["failure"] in he.FAIL_KINDS)
    s = data["summary"]
    assert s["n"] == 2 and 0 <= s["pass_at_1"] <= 100 and data["loadavg_end"] is not None
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def live_server(smollm2_gguf):
    """A real `pairline serve` process on SmolLM2-135M; yields its port."""
    port = free_port()
    proc = start_serve(port)
    try:
        wait_healthy(port, proc)
        yield port
    finally:
        stop(proc)


@pytest.mark.slow
def test_two_problems_against_a_live_server(tmp_path, live_server):
    proc = cli("eval", "humaneval", "--server", f"http://127.0.0.1:{live_server}", "--limit", "2",
               "--max-tokens", "64", "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # named after the server's model, not the --tier default's
    (out,) = tmp_path.glob("humaneval-realtime-smollm2-135m-*.json")
    data = json.loads(out.read_text())
    assert data["kind"] == "humaneval" and data["complete"] and data["model"] == "smollm2-135m"
    assert data["server"] == f"ws://127.0.0.1:{live_server}/v1/responses" and data["runtime"] == "remote"
    assert [r["task_id"] for r in data["records"]] == ["HumanEval/0", "HumanEval/1"]
    for r in data["records"]:
        assert isinstance(r["answer"], str) and r["answer"].strip() and isinstance(r["program"], str)
        assert isinstance(r["passed"], bool) and (r["failure"] is None) == r["passed"]
        assert r["passed"] or r["failure"] in he.FAIL_KINDS
        assert isinstance(r["wall_s"], float) and isinstance(r["check_s"], float)
        assert 0 < r["tokens"] <= 64 and r["prompt_tokens"] > 50 and r["forward_calls"] is None
    s = data["summary"]
    assert s["n"] == 2 and s["passed"] == sum(r["passed"] for r in data["records"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, args, message",
    [
        ("", ["--mode", "deep"], "--mode needs a `pairline route` router"),  # a plain server has no tiers
        ("/health", [], "no pairline serve session at"),  # the server answers, but no session is there
    ],
)
def test_a_server_that_refuses_is_one_line_and_exit_2(tmp_path, live_server, path, args, message):
    proc = cli("eval", "humaneval", "--server", f"http://127.0.0.1:{live_server}{path}", *args, "--limit", "1",
               "--out", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
