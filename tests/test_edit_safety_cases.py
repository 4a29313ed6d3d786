"""The check after an edit on a realistic 47-line module: edits a user would ask for pass, edits
that silently drop code (a function, a constant, a loop, a body, an elided body), break the syntax or
leave a renamed name behind are refused, and rewrites that stop early come back whole."""

from __future__ import annotations

import pytest

from pairline.assistant.check import review

SRC = '''"""Inventory helpers."""

import json
from pathlib import Path

DEFAULT_STOCK = 10


class Item:
    def __init__(self, name, price, qty=DEFAULT_STOCK):
        self.name = name
        self.price = price
        self.qty = qty

    def value(self):
        return self.price * self.qty


def load(path):
    data = json.loads(Path(path).read_text())
    return [Item(**d) for d in data]


def total_value(items):
    total = 0
    for item in items:
        total += item.value()
    return total


def grade(item):
    if item.qty == 0:
        return "out"
    elif item.qty < 5:
        return "low"
    else:
        return "ok"


def report(items):
    for item in items:
        print(item.name, grade(item), item.value())
    print("total", total_value(items))


if __name__ == "__main__":
    report(load("stock.json"))
'''

def sub(s, a, b, count=1):
    assert a in s, a
    return s.replace(a, b, count)

GRADE = '''def grade(item):
    if item.qty == 0:
        return "out"
    elif item.qty < 5:
        return "low"
    else:
        return "ok"


'''
TOTAL_BODY = "    total = 0\n    for item in items:\n        total += item.value()\n    return total"
REPORT = """def report(items):
    for item in items:
        print(item.name, grade(item), item.value())
    print("total", total_value(items))"""
GRADE_IFS = '''    if item.qty == 0:
        return "out"
    elif item.qty < 5:
        return "low"
    else:
        return "ok"'''
INIT = """class Item:
    def __init__(self, name, price, qty=DEFAULT_STOCK):
        self.name = name
        self.price = price
        self.qty = qty
"""
OK = [  # (instruction, the model's file)
    ("rename total_value to inventory_value", SRC.replace("total_value", "inventory_value")),
    ("add a currency parameter to report", sub(SRC, REPORT, REPORT.replace("(items):", '(items, currency="EUR"):')
                                               .replace("value())", "value(), currency)")
                                               .replace("(items))", "(items), currency)"))),
    ("fix: low stock is below 3", sub(SRC, "item.qty < 5", "item.qty < 3")),
    ("use sum() in total_value", sub(SRC, TOTAL_BODY, "    return sum(item.value() for item in items)")),
    ("make grade one return with a conditional expression",
     sub(SRC, GRADE_IFS, '    return "out" if item.qty == 0 else "low" if item.qty < 5 else "ok"')),
    ("add type hints to load", sub(SRC, "def load(path):", "def load(path: str) -> list[Item]:")),
    ("add a docstring to grade", sub(SRC, "def grade(item):\n", 'def grade(item):\n    """out, low or ok."""\n')),
    ("extract the line printing into a helper print_line",
     sub(SRC, "def report(items):\n    for item in items:\n        print(item.name, grade(item), item.value())",
         "def print_line(item):\n    print(item.name, grade(item), item.value())\n\n\n"
         "def report(items):\n    for item in items:\n        print_line(item)")),
    ("drop the unused import of Path and read the file with open",
     sub(sub(SRC, "from pathlib import Path\n", ""), "    data = json.loads(Path(path).read_text())",
         "    with open(path) as f:\n        data = json.load(f)")),
    ("delete the grade function and stop printing grades",
     sub(sub(SRC, GRADE, ""), "print(item.name, grade(item), item.value())", "print(item.name, item.value())")),
    ("move grade below report", sub(SRC, GRADE, "").replace("if __name__", GRADE + "if __name__")),
    ("rename the method value to worth", SRC.replace("value()", "worth()").replace("def value(", "def worth(")),
    ("change DEFAULT_STOCK to 20", sub(SRC, "DEFAULT_STOCK = 10", "DEFAULT_STOCK = 20")),
    ("rename DEFAULT_STOCK to INITIAL_QTY", SRC.replace("DEFAULT_STOCK", "INITIAL_QTY")),
    ("make Item a dataclass",
     sub(sub(SRC, "import json\n", "import json\nfrom dataclasses import dataclass\n"), INIT,
         "@dataclass\nclass Item:\n    name: str\n    price: float\n    qty: int = DEFAULT_STOCK\n")),
    ("remove the __main__ block", sub(SRC, '\n\nif __name__ == "__main__":\n    report(load("stock.json"))\n', "\n")),
]
VALUE = "\n    def value(self):\n        return self.price * self.qty\n"
BAD = [  # (instruction, the model's file, what the first error must say)
    ("rename total_value to inventory_value", sub(SRC.replace("total_value", "inventory_value"), GRADE, ""),
     "deletes lines 31-37 (function `grade`)"),
    ("add type hints", sub(SRC, TOTAL_BODY, "    ..."), "deletes lines 25-28 (the body of `total_value`)"),
    ("fix grade", sub(SRC, "DEFAULT_STOCK = 10\n", ""), "deletes line 6 (assignment `DEFAULT_STOCK`)"),
    ("rename total_value to inventory_value", sub(SRC, "def total_value(items)", "def inventory_value(items)"),
     "line 43: `total_value` is not defined (the edit renamed it to `inventory_value`"),
    ("fix grade", sub(SRC, "def grade(item):", "def grade(item)"), "line 31: the edited file is not valid Python"),
    ("add a docstring to Item", sub(sub(SRC, "class Item:\n", 'class Item:\n    """A stocked item."""\n\n'), VALUE, ""),
     "deletes lines 15-16 (function `Item.value`)"),
    ("make report print the total first",
     sub(SRC, "    for item in items:\n        print(item.name, grade(item), item.value())\n", ""),
     "deletes lines 41-42 (a `for` block)"),
    ("make load handle a missing file",
     sub(SRC, "    data = json.loads(Path(path).read_text())\n    return [Item(**d) for d in data]", "    return []"),
     "deletes lines 20-21 (the body of `load`)"),
]
STOPS = SRC.index("def report")
REWRITE_OK = [  # (instruction, a rewrite that stops early, the file to write)
    ("fix: low stock is below 3", SRC[:STOPS].replace("item.qty < 5", "item.qty < 3"),
     SRC.replace("item.qty < 5", "item.qty < 3")),
    ("add a docstring to load", SRC[: SRC.index("def total_value")].replace(
        "def load(path):\n", 'def load(path):\n    """The items in a JSON file."""\n'),
     SRC.replace("def load(path):\n", 'def load(path):\n    """The items in a JSON file."""\n')),
]


@pytest.mark.parametrize(("instruction", "new"), OK, ids=[case[0] for case in OK])
def test_legit_edit_passes(instruction, new):
    assert review("inv.py", SRC, new, instruction).errors == []


@pytest.mark.parametrize(("instruction", "new", "why"), BAD, ids=[f"{case[0]} / {case[2]}" for case in BAD])
def test_bad_edit_is_refused(instruction, new, why):
    errors = review("inv.py", SRC, new, instruction).errors
    assert errors and why in errors[0]


@pytest.mark.parametrize(("instruction", "new", "want"), REWRITE_OK, ids=[case[0] for case in REWRITE_OK])
def test_rewrite_that_stops_early_comes_back_whole(instruction, new, want):
    result = review("inv.py", SRC, new, instruction, rewrite=True)
    assert result.errors == [] and result.text == want and "it stopped before the end" in result.notes[0]


def _bench_tasks():
    from pairline.bench import edit as bench

    return bench.load_tasks()


@pytest.mark.parametrize("task", _bench_tasks(), ids=lambda t: t.name)
def test_the_bench_reference_edits_pass_the_check(task):
    """`pairline bench edit`'s reference edits (renames, new parameters, bug fixes, docstrings on
    110-167-line stdlib files) are what a correct model writes: none may be refused."""
    text = task.source
    for search, replace in task.reference:
        text = text.replace(search, replace)
    assert review(task.path, task.source, text, task.instruction).errors == []
