"""Search/replace blocks: the streaming parser and the applier, literal cases, edge cases, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairline.assistant.edits import (
    DIVIDER,
    HEAD,
    TAIL,
    EditBlock,
    EditError,
    apply_block,
    block_diff_rows,
    clean_path,
    closest_lines,
    parse_blocks,
)
from pairline.assistant.rewrite import for_model, restore_layout


def blk(path: str, search: str, replace: str, fence: str = "```python") -> str:
    return f"{path}\n{fence}\n{HEAD}\n{search}{DIVIDER}\n{replace}{TAIL}\n```\n"


def apply_text(content: str, search: str, replace: str) -> str:
    block = EditBlock("f.py", search.splitlines(), replace.splitlines())
    return apply_block(content, block)[0]


SRC = """\
import os


def greet(name):
    return "hi " + name


class Box:
    def __init__(self, size):
        self.size = size

    def grow(self, by):
        self.size += by
        return self.size
"""

# --------------------------------------------------------------------------- parsing


def test_parse_one_block():
    p = parse_blocks(blk("a.py", "x = 1\n", "x = 2\n"))
    assert p.well_formed and len(p.blocks) == 1
    b = p.blocks[0]
    assert (b.path, b.search, b.replace) == ("a.py", ["x = 1"], ["x = 2"])


def test_parse_many_blocks_with_prose_and_paths():
    answer = (
        "Here are the changes.\n\n"
        + blk("src/a.py", "a\n", "b\n")
        + "\nAnd the second file:\n\n"
        + blk("**src/b.py**", "c\nd\n", "")
        + blk("`src/c.py`", "", "new\n", fence="```")
        + "Done!\n"
    )
    p = parse_blocks(answer)
    assert p.well_formed
    assert [(b.path, b.search, b.replace) for b in p.blocks] == [
        ("src/a.py", ["a"], ["b"]),
        ("src/b.py", ["c", "d"], []),
        ("src/c.py", [], ["new"]),
    ]
    assert [b.index for b in p.blocks] == [0, 1, 2]


def test_parse_two_blocks_one_fence_reuse_path():
    answer = f"a.py\n```\n{HEAD}\n1\n{DIVIDER}\n2\n{TAIL}\n{HEAD}\n3\n{DIVIDER}\n4\n{TAIL}\n```\n"
    p = parse_blocks(answer)
    assert p.well_formed and [b.path for b in p.blocks] == ["a.py", "a.py"]


@pytest.mark.parametrize(
    "head,div,tail",
    [
        ("<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"),
        ("<<<<<<<SEARCH", "========", ">>>>>>>REPLACE"),
        ("  <<<<< search", "=====", ">>>>>>>>> Replace  "),
    ],
)
def test_parse_tolerates_marker_slack(head, div, tail):
    p = parse_blocks(f"a.py\n{head}\nx\n{div}\ny\n{tail}\n")
    assert p.well_formed and p.blocks[0].search == ["x"] and p.blocks[0].replace == ["y"]


def test_parse_any_chunking_same_result():
    answer = "Sure!\n" + blk("a.py", "x = 1\ny = 2\n", "x = 3\n") + blk("b.py", "q\n", "r\n")
    whole = parse_blocks(answer)
    for size in (1, 2, 3, 7, 50):
        from pairline.assistant.edits import BlockParser

        p = BlockParser()
        seen = []
        for i in range(0, len(answer), size):
            seen += p.feed(answer[i : i + size])
        seen += p.finish()
        assert [(b.path, b.search, b.replace) for b in seen] == [(b.path, b.search, b.replace) for b in whole.blocks]


def test_stream_yields_block_when_replace_marker_arrives():
    from pairline.assistant.edits import BlockParser

    p = BlockParser()
    assert p.feed(f"a.py\n{HEAD}\nx\n") == [] and p.state == "search"
    assert p.feed(f"{DIVIDER}\ny\n") == [] and p.state == "replace"
    assert p.partial is not None and p.partial.replace == ["y"]
    done = p.feed(f"{TAIL}\n")
    assert len(done) == 1 and p.state == "text" and p.partial is None


def test_crlf_answer():
    p = parse_blocks(blk("a.py", "x\n", "y\n").replace("\n", "\r\n"))
    assert p.well_formed and p.blocks[0].search == ["x"] and p.blocks[0].replace == ["y"]


def test_default_path_when_model_names_none():
    p = parse_blocks(f"```python\n{HEAD}\nx\n{DIVIDER}\ny\n{TAIL}\n```\n", default_path="only.py")
    assert p.well_formed and p.blocks[0].path == "only.py"


def test_prose_word_is_not_a_path():
    p = parse_blocks(f"Sure!\n{HEAD}\nx\n{DIVIDER}\ny\n{TAIL}\n", default_path="only.py")
    assert p.blocks[0].path == "only.py"
    assert clean_path("Done") is None and clean_path("File: src/x.py") == "src/x.py" and clean_path("Makefile")


def test_no_path_and_no_default_is_malformed():
    p = parse_blocks(f"{HEAD}\nx\n{DIVIDER}\ny\n{TAIL}\n")
    assert not p.well_formed and p.blocks == [] and "without a file name" in p.malformed[0].message


@pytest.mark.parametrize(
    "answer,why",
    [
        (f"a.py\n{HEAD}\nx\n", "before its ======="),
        (f"a.py\n{HEAD}\nx\n{DIVIDER}\ny\n", "before its >>>>>>> REPLACE"),
        (f"a.py\n{HEAD}\nx\n{TAIL}\n", "before the ======= divider"),
        (f"a.py\n{HEAD}\nx\n{DIVIDER}\ny\n{DIVIDER}\nz\n{TAIL}\n", "before the >>>>>>> REPLACE"),
        (f"a.py\n{DIVIDER}\n", "outside an edit block"),
    ],
)
def test_malformed_answers(answer, why):
    p = parse_blocks(answer)
    assert not p.well_formed and why in p.malformed[0].message


def test_missing_tail_then_next_block_is_followed():
    answer = f"a.py\n{HEAD}\nx\n{DIVIDER}\ny\n{HEAD}\np\n{DIVIDER}\nq\n{TAIL}\n"
    p = parse_blocks(answer)
    assert not p.well_formed and [b.search for b in p.blocks] == [["p"]]


def test_block_renders_round_trip():
    b = EditBlock("x/y.py", ["a", "  b"], ["c"])
    p = parse_blocks(b.render("python"))
    assert p.well_formed and (p.blocks[0].search, p.blocks[0].replace) == (b.search, b.replace)


def test_block_diff_rows():
    b = EditBlock("a.py", ["def f(x):", "    return x"], ["def f(x, y):", "    return x"])
    assert block_diff_rows(b) == [("-", "def f(x):"), ("+", "def f(x, y):"), (" ", "    return x")]


# --------------------------------------------------------------------------- applying


def test_exact_match():
    out = apply_text(SRC, "def greet(name):\n", "def welcome(name):\n")
    assert out == SRC.replace("def greet", "def welcome")


def test_multi_line_match_and_delete():
    out = apply_text(SRC, "    def grow(self, by):\n        self.size += by\n        return self.size\n", "")
    assert "grow" not in out and out.endswith("self.size = size\n\n")


def test_block_at_eof():
    out = apply_text(SRC, "        return self.size\n", "        return self.size * 2\n")
    assert out.endswith("return self.size * 2\n")


def test_block_at_eof_without_final_newline():
    assert apply_text("a\nb", "b\n", "c\n") == "a\nc"
    assert apply_text("a\nb", "a\n", "z\n") == "z\nb"


def test_block_at_start():
    assert apply_text(SRC, "import os\n", "import os\nimport sys\n").startswith("import os\nimport sys\n\n")


def test_trailing_whitespace_tolerated():
    out = apply_text("x = 1   \ny = 2\n", "x = 1\n", "x = 3\n")
    assert out == "x = 3\ny = 2\n"


def test_indentation_shift_reindents_replacement():
    # the model dropped the class indentation; its replacement is shifted back in
    search = "def grow(self, by):\n    self.size += by\n"
    replace = "def grow(self, by=1):\n    self.size += by\n"
    out = apply_text(SRC, search, replace)
    assert "    def grow(self, by=1):\n        self.size += by\n" in out


def test_tabs_indentation():
    src = "def f():\n\tif x:\n\t\treturn 1\n"
    assert apply_text(src, "\t\treturn 1\n", "\t\treturn 2\n") == "def f():\n\tif x:\n\t\treturn 2\n"
    # spaces where the file has a tab: found through inner whitespace, and the tab is kept
    out = apply_text(src, "if x:\n    return 1\n", "if x:\n    return 3\n")
    assert out == "def f():\n\tif x:\n\t    return 3\n" or out == "def f():\n\tif x:\n\t\treturn 3\n"


def test_inner_whitespace_tolerated():
    out = apply_text("x  =  f( 1 )\n", "x = f( 1 )\n", "x = f(2)\n")
    assert out == "x = f(2)\n"


def test_blank_lines_in_search_tolerated():
    src = "a = 1\n\nb = 2\nc = 3\n"
    assert apply_text(src, "a = 1\nb = 2\n", "a = 10\nb = 20\n") == "a = 10\nb = 20\nc = 3\n"


def test_blank_edges_trimmed():
    src = "a = 1\nb = 2\n"
    assert apply_text(src, "\n\nb = 2\n\n", "b = 3\n") == "a = 1\nb = 3\n"


def test_unicode():
    src = "naïve = 'café'\nπ = 3.14\n"
    assert apply_text(src, "π = 3.14\n", "π = 3.14159  # ≈\n") == "naïve = 'café'\nπ = 3.14159  # ≈\n"


def test_empty_file_and_new_file():
    assert apply_text("", "", "print('hi')\n") == "print('hi')\n"
    assert apply_text("\n", "", "x\n") == "x\n"


def test_empty_search_appends_to_nonempty_file():
    assert apply_text("a\n", "", "b\n") == "a\nb\n"
    assert apply_text("a", "", "b\n") == "a\nb\n"


def test_not_found_says_did_you_mean():
    with pytest.raises(EditError) as e:
        apply_text(SRC, "def greet(nam):\n    return 'hello ' + name\n", "x\n")
    msg = str(e.value)
    assert "does not match" in msg and "Did you mean" in msg
    assert '    4| def greet(name):' in msg and 'return "hi " + name' in msg


def test_not_found_nothing_close():
    with pytest.raises(EditError, match="Copy the lines"):
        apply_text(SRC, "zzzzqqqq wwww\n", "x\n")


def test_ambiguous_match_fails_loudly():
    src = "x = 1\ny = 2\nx = 1\n"
    with pytest.raises(EditError, match=r"matches 2 places \(at lines 1, 3\)"):
        apply_text(src, "x = 1\n", "x = 9\n")
    assert apply_text(src, "y = 2\nx = 1\n", "y = 2\nx = 9\n") == "x = 1\ny = 2\nx = 9\n"


def test_ambiguous_in_loose_tier_is_not_resolved_by_guessing():
    src = "if a:\n    go()\nif b:\n        go()\n"
    with pytest.raises(EditError, match="matches 2 places"):
        apply_text(src, "go()\n", "stop()\n")


def test_exact_tier_wins_over_loose():
    src = "  x = 1\nx = 1 \n"  # one exact, one only loosely equal
    assert apply_text(src, "  x = 1\n", "  y\n") == "  y\nx = 1 \n"


def test_crlf_file_via_layout():
    original = "a = 1\r\nb = 2\r\nc = 3\r\n"
    model_text = for_model(original)
    new = apply_text(model_text, "b = 2\n", "b = 20\n")
    assert restore_layout(original, new) == "a = 1\r\nb = 20\r\nc = 3\r\n"


def test_closest_lines():
    file = ["alpha", "beta gamma", "delta", "epsilon"]
    assert closest_lines(file, ["beta gama", "delta"]) == (1, ["beta gamma", "delta"])
    assert closest_lines([], ["x"]) is None


# --------------------------------------------------------------------------- fuzzing

_line = st.lists(st.sampled_from(list("ab (){}:=\t.é'") + ["    "]), max_size=8).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line, min_size=1, max_size=25), st.data())
def test_fuzz_unique_exact_span_applies_exactly(lines, data):
    """Any span of lines that occurs once in the file is replaced exactly, and nothing else moves."""
    i = data.draw(st.integers(0, len(lines) - 1))
    j = data.draw(st.integers(i + 1, len(lines)))
    span = lines[i:j]
    replacement = data.draw(st.lists(_line, max_size=4))
    content = "".join(x + "\n" for x in lines)
    if not any(s.strip() for s in span):
        return
    block = EditBlock("f", span, replacement)
    occurrences = sum(lines[k : k + len(span)] == span for k in range(len(lines) - len(span) + 1))
    if occurrences > 1:
        with pytest.raises(EditError):
            apply_block(content, block)
        return
    out, m = apply_block(content, block)
    assert m is not None and m.tier == "exact"
    assert out == "".join(x + "\n" for x in lines[:i] + replacement + lines[j:])


@settings(max_examples=200, deadline=None)
@given(st.lists(_line, min_size=0, max_size=20), st.lists(_line, min_size=1, max_size=5), st.lists(_line, max_size=5))
def test_fuzz_never_crashes_and_only_changes_the_matched_span(lines, search, replace):
    """Whatever the block, the applier raises EditError, or replaces exactly the lines it reports
    matching (whose words are the searched words) with the replacement's words."""
    content = "".join(x + "\n" for x in lines)
    try:
        out, m = apply_block(content, EditBlock("f", search, replace))
    except EditError as e:
        assert str(e).startswith("f: ")
        return
    new = out.split("\n")[:-1] if out else []
    if m is None:  # empty SEARCH: appended
        assert not any(s.strip() for s in search)
        assert out == "".join(x + "\n" for x in replace) if not content.strip() else new[: len(lines)] == lines
        return
    assert new[: m.start] == lines[: m.start]
    tail = len(lines) - m.end
    assert new[len(new) - tail :] == lines[m.end :] if tail else True
    middle = new[m.start : len(new) - tail]
    assert [x.split() for x in middle] == [x.split() for x in replace] or m.tier == "blank lines"
    words = lambda xs: [x.split() for x in xs if x.strip()]  # noqa: E731
    assert words(lines[m.start : m.end]) == words(search)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300), st.integers(1, 40))
def test_fuzz_parser_is_chunking_invariant_and_never_crashes(noise, size):
    answer = noise + "\n" + blk("p.py", "a\n", "b\n") + noise
    from pairline.assistant.edits import BlockParser

    whole = parse_blocks(answer)
    p = BlockParser()
    got = []
    for i in range(0, len(answer), size):
        got += p.feed(answer[i : i + size])
    got += p.finish()
    assert [(b.search, b.replace) for b in got] == [(b.search, b.replace) for b in whole.blocks]
    assert len(p.malformed) == len(whole.malformed)
