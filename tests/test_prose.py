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


# METHODS.md is the team's internal maths notes, outside the repository: a reader of the book or a user of
# the library cannot open it, so a pointer to it ("METHODS.md §3.13", "METHODS 2.1", "METHODS ch. 5",
# "METHODS A8") must become the paper and/or the book's chapter and equation label. The method registry
# `alignlib.methods.METHODS` (METHODS["dpo"], "register it in `METHODS`") is code and is not matched.
INTERNAL_NOTES = re.compile(r"METHODS(?:\.md\b|\s*§|\s+\d|\s+ch\.|\s+A\d)")


def _sources_with_lines():
    """The book's texts (as _texts) plus the library's source, chapters/*.md and the README."""
    paths = [*sorted((ROOT / "alignlib").rglob("*.py")), *sorted((ROOT / "chapters").glob("*.md")), ROOT / "README.md"]
    for path in paths:
        if path.exists():
            yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")
    yield from _texts()


def test_no_pointers_to_the_internal_methods_notes():
    found = [f"{where}:{number}: {line.strip()[:100]}"
             for where, text in _sources_with_lines()
             for number, line in enumerate(text.splitlines(), start=1) if INTERNAL_NOTES.search(line)]
    assert not found, ("these lines point readers at METHODS.md, a file outside the repository; cite the paper "
                       "and/or the book's chapter and equation label instead:\n" + "\n".join(found))


# book/notation.md promises that a library function implementing an equation of the book names the equation's
# label in its docstring, e.g. "(eq-log-ratio)", so that a reader can search the book for it. A label the book
# does not define ("eq-dno-loss" where chapter 5 says eq-ch5-dno-loss) sends that reader searching for nothing.
# Labels are defined by `:label: eq-...` in a {math} directive or by `$$ (eq-...)` after a $$ block.
EQ_LABEL = re.compile(r"(?<![\w-])eq-[A-Za-z0-9_-]*[A-Za-z0-9]")
EQ_LABEL_DEFINITION = re.compile(r"^\s*:label:\s*(eq-[A-Za-z0-9_-]+)|\$\$\s*\((eq-[A-Za-z0-9_-]+)\)", re.M)


def test_equation_labels_named_in_the_library_exist_in_the_book():
    texts = [path.read_text(encoding="utf-8") for path in sorted((ROOT / "book").glob("*.md"))]
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        texts += [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "markdown"]
    defined = {a or b for text in texts for a, b in EQ_LABEL_DEFINITION.findall(text)}
    assert len(defined) > 50, f"found only {len(defined)} equation labels in the book; is the pattern still right?"
    missing = [f"{path.relative_to(ROOT).as_posix()}:{number}: {label}"
               for path in sorted((ROOT / "alignlib").rglob("*.py"))
               for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
               for label in EQ_LABEL.findall(line) if label not in defined]
    assert not missing, ("these equation labels are named in alignlib but defined nowhere in the book (chapters' "
                         "markdown cells, book/*.md); use the label of the equation the code implements, or say in "
                         "words where the book derives it:\n" + "\n".join(missing))
