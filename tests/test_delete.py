"""The DELETE action (assistant/delete.py): exactly a definition's lines (decorators and the comment
right above included), its `__all__` entry, the main guard; offered only where asked; applied by the
coder after the blocks."""

from __future__ import annotations

import ast

import pytest

from pairline.assistant.coder import Coder, load_file
from pairline.assistant.delete import apply_delete, deletable, delete_targets
from pairline.assistant.edit_grammar import blocks_grammar
from pairline.assistant.edits import EditError, parse_blocks
from pairline.assistant.workspace import Workspace
from pairline.engine.constraint import compile_grammar
from pairline.engine.tokenizer import Tokenizer
from tests.assistant_helpers import ScriptedClient

MOD = """\
import functools

__all__ = ["keep", "old_helper", "Shape"]


def keep(x):
    return x + 1


# kept for old callers
@functools.cache
def old_helper(x):
    return keep(x) * 2


class Shape:
    def area(self):
        return 0

    def legacy(self):
        return -1


alias = keep  # backward compatibility


if __name__ == "__main__":
    print(old_helper(1))
"""


def test_a_function_goes_with_its_decorator_comment_and_all_entry():
    new = apply_delete(MOD, "old_helper")
    assert "old_helper" not in new.split("__main__")[0]  # the main guard still calls it: not ours to touch
    assert "# kept for old callers" not in new and "@functools.cache" not in new
    assert '__all__ = ["keep", "Shape"]' in new
    assert "\n\n\n\n" not in new  # no hole of blank lines left behind
    ast.parse(new)


def test_a_method_an_alias_and_the_main_guard():
    new = apply_delete(MOD, "Shape.legacy")
    assert "def legacy" not in new and "def area" in new
    new = apply_delete(MOD, "alias")
    assert "alias" not in new and "backward compatibility" not in new
    new = apply_delete(MOD, "__main__")
    assert "__main__" not in new and new.endswith("alias = keep  # backward compatibility\n")
    ast.parse(new)


def test_last_entry_of_all():
    new = apply_delete(MOD, "Shape")
    assert '__all__ = ["keep", "old_helper"]' in new and "class Shape" not in new


def test_errors():
    with pytest.raises(EditError, match="defines no"):
        apply_delete(MOD, "nothing_here")
    with pytest.raises(EditError, match="not valid Python"):
        apply_delete("def f(:\n", "f")


def test_targets_follow_the_instruction():
    assert set(deletable(MOD)) >= {"keep", "old_helper", "Shape", "Shape.legacy", "alias", "__main__"}
    assert delete_targets("Delete the unused function old_helper", MOD) == ["old_helper"]
    assert set(delete_targets("Remove `legacy` and the __main__ block", MOD)) == {"Shape.legacy", "__main__"}
    assert delete_targets("Make old_helper faster", MOD) == []  # nothing asked to be deleted


def test_the_grammar_offers_delete_only_where_asked(smollm2_gguf):
    tok = Tokenizer.from_gguf(smollm2_gguf)

    def allowed(grammar, text):
        ids = tok.encode_text(text)
        return compile_grammar(grammar, tok).allows(ids) == len(ids)

    asked = blocks_grammar([("mod.py", MOD)], "Delete the unused function old_helper")
    assert allowed(asked, "mod.py\nDELETE old_helper\n")
    assert not allowed(asked, "mod.py\nDELETE keep\n")  # not what the instruction names
    assert not allowed(blocks_grammar([("mod.py", MOD)], "Speed up old_helper"), "mod.py\nDELETE ")


def test_the_parser_and_the_coder(tmp_path):
    parser = parse_blocks("mod.py\nDELETE old_helper\n")
    assert [(d.path, d.name) for d in parser.deletes] == [("mod.py", "old_helper")]
    (tmp_path / "mod.py").write_text(MOD)
    # a small model loops: the first repeat ends the answer
    repeated = "mod.py\nDELETE old_helper\nmod.py\nDELETE __main__\n" * 30
    client = ScriptedClient([repeated])
    client.supports_grammar = True  # not primed with a block's opening
    ws = Workspace(tmp_path, git=False)
    events = []
    result = Coder(client, ws, on_event=events.append, search_cap=None).run(
        [load_file(ws, tmp_path / "mod.py")], "Remove old_helper and the __main__ block", mode="blocks")
    assert result.status == "changed", result.errors
    new = result.new_texts[tmp_path / "mod.py"]
    assert "old_helper" not in new and "__main__" not in new and "def keep" in new
    assert [e.text for e in events if e.kind == "delete"] == ["old_helper", "__main__"]
    assert result.stats.deletes == 2
    assert len(client.calls) == 1


def test_the_check_takes_a_main_block_or_a_quoted_block_header_as_asked_for():
    from pairline.assistant.check import review_files

    quoted_header = """\
def _debug(s):
    print(s)


if __name__ == '__main__':
    if len(sys.argv) == 1:
        _debug(sys.stdin)
    else:
        fn = sys.argv[1]
        with open(fn) as f:
            _debug(f)
"""
    src = "import sys\n\n\ndef keep():\n    return 1\n\n\n" + quoted_header
    new = "import sys\n\n\ndef keep():\n    return 1\n"
    ok = review_files([("m.py", src, new)], "Remove `_debug` and the `if __name__ == '__main__':` block that uses it")
    assert ok[0].errors == []  # the whole block, its else: included
    ok = review_files([("m.py", src, new)], "Delete the function _debug and the command-line entry point")
    assert ok[0].errors == []
    refused = review_files([("m.py", src, new)], "Delete the function _debug")
    assert refused[0].errors  # the main block was not asked for
