"""The book's text carries no control characters.

A formula written into a notebook from a Python string without the r prefix loses
its backslashes to escapes: "\\beta" becomes a backspace and "eta", "\\rho" a carriage
return, "\\theta" a tab. MathJax then shows garbage, or nothing, and no build fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\t")  # everything below space except newline


def _texts():
    for path in sorted((ROOT / "book").glob("*.md")):
        yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            yield f"{path.relative_to(ROOT).as_posix()} cell {i}", cell.source


def test_no_control_characters_in_the_book():
    found = [f"{where}: {text[max(0, m.start() - 25):m.end() + 25]!r}"
             for where, text in _texts() for m in CONTROL.finditer(text)]
    assert not found, "control characters (an unescaped backslash?):\n" + "\n".join(found[:20])
