"""The RENAME action (assistant/rename.py over rope): every reference renamed, scoped names,
several files, clear errors; and the coder applying it after the blocks of the same answer."""

from __future__ import annotations

import pytest

from pairline.assistant.coder import Coder, load_file
from pairline.assistant.edits import EditError, parse_blocks
from pairline.assistant.rename import apply_rename, names_bound, new_names, rename_targets
from pairline.assistant.workspace import Workspace
from tests.assistant_helpers import ScriptedClient

SHOP = """\
__all__ = ["total_price", "receipt"]


def total_price(items):
    return sum(item["price"] * item["qty"] for item in items)


def receipt(items, total=None):
    total = total_price(items) if total is None else total
    return f"{len(items)} items: {total}"


if __name__ == "__main__":
    print(total_price([{"price": 2, "qty": 3}]))
"""

REPORT = """\
import shop


def report(items):
    return "total " + str(shop.total_price(items))
"""


def test_every_reference_and_the_all_entry():
    new = apply_rename({"shop.py": SHOP}, "shop.py", "total_price", "basket_total")["shop.py"]
    assert "total_price" not in new
    assert new.count("basket_total") == 4  # __all__, def, two calls
    assert new.replace("basket_total", "total_price") == SHOP  # nothing else changed


def test_a_parameter_by_its_scope():
    new = apply_rename({"shop.py": SHOP}, "shop.py", "receipt.total", "given")["shop.py"]
    assert "def receipt(items, given=None):" in new
    assert "given = total_price(items) if given is None else given" in new
    assert 'return f"{len(items)} items: {given}"' in new


def test_across_the_files_of_the_edit():
    changed = apply_rename({"shop.py": SHOP, "report.py": REPORT}, "shop.py", "total_price", "basket_total")
    assert set(changed) == {"shop.py", "report.py"}
    assert "shop.basket_total(items)" in changed["report.py"]


def test_errors_are_clear():
    with pytest.raises(EditError, match="nothing in the file binds"):
        apply_rename({"shop.py": SHOP}, "shop.py", "grand_total", "x")
    with pytest.raises(EditError, match="not a valid Python name"):
        apply_rename({"shop.py": SHOP}, "shop.py", "total_price", "class")
    with pytest.raises(EditError, match="Python files"):
        apply_rename({"notes.md": "total_price\n"}, "notes.md", "total_price", "x")
    with pytest.raises(EditError, match="not valid Python"):
        apply_rename({"bad.py": "def f(:\n"}, "bad.py", "f", "g")
    with pytest.raises(EditError, match="not a file of this edit"):
        apply_rename({"shop.py": SHOP}, "other.py", "total_price", "x")


def test_names_bound():
    names = names_bound(SHOP)
    assert {"total_price", "receipt", "receipt.total", "receipt.items", "__all__"} <= set(names)
    assert names_bound("def f(:\n") == []


def test_rename_targets_follow_the_instruction():
    assert rename_targets("Rename `total_price` to `basket_total` everywhere", SHOP) == ["total_price"]
    scoped = rename_targets("rename the parameter total of receipt to given", SHOP)
    assert set(scoped) == {"receipt", "receipt.total", "total"}
    assert rename_targets("Fix the bug in total_price", SHOP) == []  # no rename asked for
    assert rename_targets("Give it a new name: basket_total", SHOP) == []  # nothing bound is mentioned


def test_new_names_come_from_the_instruction():
    assert new_names("Rename `total_price` to `basket_total` everywhere", SHOP) == ["basket_total"]
    assert new_names("rename total_price to basket_total", SHOP) == ["basket_total"]
    assert new_names("rename total_price to receipt", SHOP) == []  # taken: any name then (rope will refuse)


def test_the_coder_sends_no_op_blocks_back_once(tmp_path):
    (tmp_path / "shop.py").write_text(SHOP)
    head = "def receipt(items, total=None):\n"
    same = f"shop.py\n```python\n<<<<<<< SEARCH\n{head}=======\n{head}>>>>>>> REPLACE\n```\n"
    fixed = same.replace("=======\ndef receipt(items, total=None):", "=======\ndef receipt(items, total=0):")
    client = ScriptedClient([same, fixed])
    ws = Workspace(tmp_path, git=False)
    result = Coder(client, ws, search_cap=None).run([load_file(ws, tmp_path / "shop.py")], "default total to 0",
                                                    mode="blocks")
    assert result.status == "changed" and result.stats.retried
    assert "nothing changed" in client.calls[1]["messages"][-1]["content"]


def test_the_parser_reads_rename_lines():
    parser = parse_blocks("shop.py\nRENAME total_price basket_total\n", default_path=None)
    assert [(r.path, r.old, r.new) for r in parser.renames] == [("shop.py", "total_price", "basket_total")]
    assert parser.blocks == [] and parser.well_formed
    worded = parse_blocks("shop.py\nRENAME total_price to basket_total\n", default_path=None)
    assert [(r.old, r.new) for r in worded.renames] == [("total_price", "basket_total")]


def test_the_coder_applies_blocks_then_renames(tmp_path):
    (tmp_path / "shop.py").write_text(SHOP)
    (tmp_path / "report.py").write_text(REPORT)
    answer = (
        "shop.py\n```python\n<<<<<<< SEARCH\n    return sum(item[\"price\"] * item[\"qty\"] for item in items)\n"
        "=======\n    return round(sum(item[\"price\"] * item[\"qty\"] for item in items), 2)\n"
        ">>>>>>> REPLACE\n```\nshop.py\nRENAME total_price basket_total\nshop.py\nRENAME total_price basket_total\n"
    )
    client = ScriptedClient([answer])
    ws = Workspace(tmp_path, git=False)
    events = []
    coder = Coder(client, ws, on_event=events.append, search_cap=None)
    files = [load_file(ws, tmp_path / "shop.py"), load_file(ws, tmp_path / "report.py")]
    result = coder.run(files, "Rename `total_price` to `basket_total` and round it to 2 digits.", mode="blocks")
    assert result.status == "changed", result.errors
    texts = {p.name: t for p, t in result.new_texts.items()}
    assert "return round(sum(" in texts["shop.py"] and "total_price" not in texts["shop.py"]
    assert "shop.basket_total(items)" in texts["report.py"]
    assert [e.text for e in events if e.kind == "rename"] == ["total_price → basket_total"]  # the repeat is dropped
    assert result.stats.renames == 1


def test_a_failed_rename_goes_back_to_the_model_once(tmp_path):
    (tmp_path / "shop.py").write_text(SHOP)
    client = ScriptedClient(["shop.py\nRENAME grand_total x\n", "shop.py\nRENAME total_price basket_total\n"])
    client.supports_grammar = True  # so the answer is not primed with a block's opening (the grammar's way)
    ws = Workspace(tmp_path, git=False)
    result = Coder(client, ws, search_cap=None).run([load_file(ws, tmp_path / "shop.py")], "rename total_price",
                                                    mode="blocks")
    assert result.status == "changed" and result.stats.retried
    assert "nothing in the file binds" in client.calls[1]["messages"][-1]["content"]
    assert client.calls[0]["prefix"] == "" and client.calls[0]["grammar"] is not None


def test_an_action_on_a_file_outside_the_edit_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "shop.py").write_text(SHOP)
    # a small model copying the prompt's example names its file
    client = ScriptedClient(["geometry.py\nRENAME area.r radius\n", "geometry.py\nDELETE area\n"])
    client.supports_grammar = True
    ws = Workspace(tmp_path, git=False)
    result = Coder(client, ws, search_cap=None).run([load_file(ws, tmp_path / "shop.py")], "rename r to radius",
                                                    mode="blocks")
    assert result.status == "malformed" and "geometry.py" in result.errors[0]
    assert not (tmp_path / "geometry.py").exists()
