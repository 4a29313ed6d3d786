"""The edit grammars (assistant/edit_grammar.py): a SEARCH part can only be lines of the file that
match one place, a rewrite cannot close its fence early, and a model decoding under them (random
weights here, real ones in the coder tests) writes only blocks that apply."""

from __future__ import annotations

import pytest

from pairline.assistant.edit_grammar import blocks_grammar, rewrite_grammar, unique_lengths
from pairline.assistant.edits import BlockParser, apply_block
from pairline.assistant.rename import apply_rename, names_bound
from pairline.assistant.sites import find_sites, named_in, sites_message
from pairline.engine.constraint import compile_grammar
from pairline.engine.sampling import SamplingParams
from pairline.engine.tokenizer import Tokenizer
from pairline.errors import PairlineError
from tests.engine_helpers import tiny_engine

SHOP = """\
def total_price(items):
    return sum(item["price"] * item["qty"] for item in items)


def receipt(items):
    lines = [f"{item['name']}: {item['price']}" for item in items]
    lines.append(f"total: {total_price(items)}")
    return "\\n".join(lines)


def count(items):
    return len(items)


if __name__ == "__main__":
    print(total_price([{"name": "tea", "price": 2, "qty": 3}]))
"""
HEAD = "shop.py\n```python\n<<<<<<< SEARCH\n"


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf)


def allowed(tokenizer, grammar, text: str) -> bool:
    ids = tokenizer.encode_text(text)
    return compile_grammar(grammar, tokenizer).allows(ids) == len(ids)


def block(search: str, replace: str) -> str:
    return f"{HEAD}{search}=======\n{replace}>>>>>>> REPLACE\n```\n"


def test_search_parts_are_lines_of_the_file(tokenizer):
    g = blocks_grammar([("shop.py", SHOP)])
    rename = block("def total_price(items):\n", "def basket_total(items):\n")
    old = '    lines.append(f"total: {total_price(items)}")\n'
    call = block(old, old.replace("total_price", "basket_total"))
    assert allowed(tokenizer, g, rename + "\n" + call)
    assert not allowed(tokenizer, g, block("def total(items):\n", "x\n"))  # invented
    assert not allowed(tokenizer, g, block("def total_price(items): \n", "x\n"))  # not exact
    assert not allowed(tokenizer, g, "other.py\n```python\n<<<<<<< SEARCH\n")  # not a file of the edit
    assert not allowed(tokenizer, g, rename + "Done!\n")  # nothing but blocks


def test_a_search_part_must_match_one_place(tokenizer):
    g = blocks_grammar([("shop.py", SHOP)])
    twice = "    return sum(item[\"price\"] * item[\"qty\"] for item in items)\n"
    assert SHOP.count("def ") == 3 and SHOP.count("(items):\n") == 3
    assert not allowed(tokenizer, g, f"{HEAD}\n\n=======\n")  # two blank lines: at 3 places
    assert allowed(tokenizer, g, block(twice, "    return 0\n"))  # unique on its own
    lines = SHOP.splitlines(keepends=True)
    need = unique_lengths(lines)
    assert need[0] == 1 and need[2] is not None and need[2] > 1  # a blank line needs its neighbours


def test_unique_lengths_on_repeats():
    assert unique_lengths(["a\n", "b\n", "a\n", "c\n"]) == [2, 1, 2, 1]
    assert unique_lengths(["x\n", "x\n"]) == [2, None]  # "x" alone is at two places; "x x" at one
    assert unique_lengths(["x\n"] * 60) == [None] * 60  # unique only as the whole file: past the limit


def test_replace_is_free_but_cannot_fake_the_end_marker(tokenizer):
    g = blocks_grammar([("shop.py", SHOP)])
    odd = "    # >> not the marker\n>>>> a quote\n\n"
    assert allowed(tokenizer, g, block("def count(items):\n", odd))
    assert allowed(tokenizer, g, block("def count(items):\n", ""))  # deleting lines is a block too


def test_a_new_file_has_an_empty_search(tokenizer):
    g = blocks_grammar([("shop.py", SHOP), ("new.py", None)])
    assert allowed(tokenizer, g, "new.py\n```python\n<<<<<<< SEARCH\n=======\nx = 1\n>>>>>>> REPLACE\n```\n")
    assert not allowed(tokenizer, g, "new.py\n```python\n<<<<<<< SEARCH\nx = 1\n")


def test_a_rewrite_is_one_fence_and_nothing_else(tokenizer):
    g = rewrite_grammar("shop.py")
    assert allowed(tokenizer, g, f"```python\n{SHOP}```")
    head = "".join(SHOP.splitlines(keepends=True)[:2])
    assert allowed(tokenizer, g, f"```python\n{head}```")  # a region from the top: check.review adds the tail
    assert not allowed(tokenizer, g, f"```python\n{SHOP}```\nThis renames it.")  # nothing after the fence
    assert not allowed(tokenizer, g, f"```python\n{head}``\"`\n")  # no fake fence
    assert not allowed(tokenizer, g, f"Here it is:\n```python\n{SHOP}```")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_random_model_writes_only_items_that_apply(tokenizer, seed):
    engine = tiny_engine(tokenizer, arch="qwen2", n_ctx=2048, seed=seed)
    g = blocks_grammar([("shop.py", SHOP)], "rename total_price or receipt, or change count")
    params = SamplingParams(max_tokens=300, temperature=1.0, seed=seed)
    out = engine.generate("Edit the file.", params, grammar=g).run()
    parser = BlockParser(default_path="shop.py")
    blocks = [*parser.feed(out.text), *parser.finish()] if out.finish_reason == "stop" else parser.feed(out.text)
    assert out.text.startswith("shop.py\n")  # forced: the only file
    text = SHOP
    for b in blocks:  # each complete block applies, in order (nothing else can be written)
        text, _ = apply_block(text, b, path="shop.py")
    renamed: set[str] = set()
    for r in parser.renames:  # and each RENAME names something the file binds
        assert r.path == "shop.py" and r.old in names_bound(SHOP)
        if r.old in renamed:  # a second RENAME of one name: a static grammar cannot rule it out, and
            with pytest.raises(PairlineError):  # applying it fails loudly (the coder reports it)
                apply_rename({"shop.py": text}, "shop.py", r.old, r.new)
            continue
        renamed.add(r.old)
        text = apply_rename({"shop.py": text}, "shop.py", r.old, r.new).get("shop.py", text)
    assert blocks or parser.renames or out.finish_reason == "length"
    assert parser.malformed == [] or out.finish_reason == "length"


def test_rename_lines_name_what_the_instruction_asks_to_rename(tokenizer):
    files = [("shop.py", SHOP), ("notes.txt", "total_price\n")]
    g = blocks_grammar(files, "Rename total_price to basket_total, and the parameter items of receipt to goods")
    assert allowed(tokenizer, g, "shop.py\nRENAME total_price basket_total\n")
    assert allowed(tokenizer, g, "shop.py\nRENAME total_price to basket_total\n")  # worded like the instruction
    assert allowed(tokenizer, g, "shop.py\nRENAME receipt.items goods\n\n" + block("def count(items):\n", "x\n"))
    assert not allowed(tokenizer, g, "shop.py\nRENAME count number\n")  # bound, but not what was asked
    assert not allowed(tokenizer, g, "shop.py\nRENAME totalprice basket_total\n")  # not bound in the file
    assert not allowed(tokenizer, g, "shop.py\nRENAME total_price 9lives\n")  # not a name
    assert not allowed(tokenizer, g, "shop.py\nRENAME total_price total\n")  # not the name the instruction gives
    assert not allowed(tokenizer, g, "notes.txt\nRENAME ")  # only Python files
    no_rename = blocks_grammar(files, "Make total_price round to 2 digits")
    assert not allowed(tokenizer, no_rename, "shop.py\nRENAME ")  # not asked for: blocks only


def test_sites_list_the_lines_of_the_names_in_the_instruction():
    sites = find_sites({"shop.py": SHOP}, "Rename the function total_price to basket_total everywhere in this file.")
    assert [s.line for s in sites] == [1, 7, 16]
    message = sites_message(sites)
    assert "shop.py:7:" in message and "total_price(items)" in message
    # backquoted names only where the instruction quotes any; plain English never counts
    assert named_in("Add a parameter `name` to `receipt`, keep the items", SHOP) == ["receipt"]
    assert named_in("make the items list shorter", SHOP) == []
    assert find_sites({"shop.py": SHOP}, "Explain this file") == []
    assert sites_message([]) == ""


def test_sites_in_a_file_that_does_not_parse():
    broken = "def total_price(items:\n    return 1\nx = total_price\n"
    assert [s.line for s in find_sites({"a.py": broken}, "rename total_price")] == [1, 3]
