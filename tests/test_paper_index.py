"""The paper index (book/paper_index.md): one row per reading-list paper, and every pointer in it is real.

Each table row is `| # | {cite:t}`key` (name) | depth | where in the book | in alignlib | checked by |`.
Checked without building the book: the 69 reading-list papers appear once each, with their own number,
key and depth, in reading-list order within each table; every `alignlib.` name imports, every
`--method`/`--loss_type`/`--listwise_loss` value is registered and every other flag is a TrainConfig
field; every `tests/...py[::test_name]` exists; every {ref} label and {doc} page exists.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import re
from pathlib import Path

import pytest

import test_bibliography

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "paper_index.md"
FIX = "(edit the row in book/paper_index.md)"

ROW = re.compile(r"^\|\s*(\d+)\s*\|(.*)\|\s*$")
CODE = re.compile(r"`([^`]+)`")
ROLE = re.compile(r"\{(ref|doc)\}`([^`]+)`")


@dataclasses.dataclass
class Row:
    number: int
    table: int  # which table (book part) the row is in, 0-based
    paper: str
    depth: str
    where: str
    alignlib: str
    checked: str

    @property
    def name(self) -> str:
        keys = re.findall(r"`([^`]+)`", self.paper)
        return f"row #{self.number} ({keys[0] if keys else self.paper.strip()[:40]})"


def read_rows() -> list[Row]:
    rows, table, in_table = [], -1, False
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("| # |"):
            table, in_table = table + 1, True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        found = ROW.match(line)
        if not found or not in_table:
            continue
        cells = [c.strip() for c in found.group(2).split("|")]
        assert len(cells) == 5, f"row #{found.group(1)} has {len(cells) + 1} cells, expected 6 {FIX}: {line[:120]}"
        rows.append(Row(int(found.group(1)), table, *cells))
    return rows


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    assert PAGE.exists(), "book/paper_index.md is missing"
    found = read_rows()
    assert found, "book/paper_index.md has no table rows ('| # | paper | ...' header, then one row per paper)"
    return found


def code_items(cell: str) -> list[str]:
    return CODE.findall(ROLE.sub("", cell))


def test_every_reading_list_paper_appears_once_with_its_own_key_and_depth(rows):
    reading = test_bibliography.READING_LIST
    entries = getattr(test_bibliography, "READING_LIST_ENTRIES", None)
    numbers = [r.number for r in rows]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicates, f"papers listed more than once: {duplicates}; keep one row each {FIX}"
    missing = sorted(set(reading) - set(numbers))
    assert not missing, f"reading-list papers without a row: {[(n, reading[n]) for n in missing]} {FIX}"
    extra = sorted(set(numbers) - set(reading))
    assert not extra, f"rows whose number is not on the reading list: {extra} {FIX}"
    problems = []
    for r in rows:
        keys = re.findall(r"\{cite:t\}`([^`]+)`", r.paper)
        if keys != [reading[r.number]]:
            problems.append(f"{r.name}: the paper cell must cite exactly {{cite:t}}`{reading[r.number]}`, found {keys}")
        if entries is not None and r.depth != entries[r.number][1]:
            problems.append(f"{r.name}: depth {r.depth!r}, the reading list says {entries[r.number][1]!r}")
        elif r.depth not in ("I", "D", "R"):
            problems.append(f"{r.name}: depth must be I, D or R, found {r.depth!r}")
    assert not problems, "\n".join(problems) + f"\n{FIX}"


def test_rows_are_in_reading_list_order_within_each_table(rows):
    problems = []
    for a, b in zip(rows, rows[1:]):
        if a.table == b.table and b.number < a.number:
            problems.append(f"{b.name} comes after #{a.number} in the same table; sort each table by #")
    assert not problems, "\n".join(problems) + f" {FIX}"


def resolve(dotted: str):
    """Import the longest importable module prefix of `dotted`, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError names the missing part
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_alignlib_name_and_flag_exists(rows):
    from alignlib.config import TrainConfig
    from alignlib.losses import LISTWISE_LOSSES, PAIRWISE_LOSSES
    from alignlib.methods import METHODS

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    registries = {"method": (METHODS, "alignlib.methods.METHODS"),
                  "loss_type": (PAIRWISE_LOSSES, "alignlib.losses.PAIRWISE_LOSSES"),
                  "listwise_loss": (LISTWISE_LOSSES, "alignlib.losses.LISTWISE_LOSSES")}
    problems = []
    for r in rows:
        if r.alignlib != "—" and not code_items(r.alignlib):
            problems.append(f"{r.name}: 'in alignlib' is neither '—' nor inline-code names")
        for item in code_items(r.alignlib):
            if item.startswith("alignlib."):
                try:
                    resolve(item)
                except (ImportError, AttributeError) as err:
                    problems.append(f"{r.name}: `{item}` does not resolve ({err}); use the real dotted name")
            elif item.startswith("--"):
                flag, _, value = item[2:].partition(" ")
                if flag in registries:
                    registry, where = registries[flag]
                    if value not in registry:
                        problems.append(f"{r.name}: `{item}`: {value!r} is not in {where}")
                elif flag not in fields:
                    problems.append(f"{r.name}: `{item}`: no TrainConfig field {flag!r}")
            else:
                problems.append(f"{r.name}: `{item}` is neither a dotted `alignlib.` name nor a `--flag`")
    assert not problems, "\n".join(problems) + f"\n{FIX}"


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_test_reference_exists(rows):
    problems = []
    for r in rows:
        if r.checked != "—" and not code_items(r.checked):
            problems.append(f"{r.name}: 'checked by' is neither '—' nor inline-code test paths")
        for item in code_items(r.checked):
            path, _, func = item.partition("::")
            if not re.fullmatch(r"tests/test_\w+\.py", path):
                problems.append(f"{r.name}: `{item}` is not tests/test_<name>.py[::test_function]")
                continue
            if not (ROOT / path).exists():
                problems.append(f"{r.name}: {path} does not exist")
            elif func and func not in _test_functions(ROOT / path):
                problems.append(f"{r.name}: {path} defines no function {func!r}")
    assert not problems, "\n".join(problems) + f"\n{FIX}"


def _labels() -> set[str]:
    texts = [p.read_text(encoding="utf-8") for p in (ROOT / "book").glob("*.md")]
    for path in (ROOT / "chapters").glob("*.ipynb"):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        texts += ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    return set(re.findall(r"^\(([\w-]+)\)=\s*$", "\n".join(texts), re.M))


def test_every_section_link_exists(rows):
    labels, problems = _labels(), []
    for r in rows:
        roles = ROLE.findall(r.where)
        if not roles:
            problems.append(f"{r.name}: 'where in the book' needs a {{ref}} to a section or a {{doc}} to a page")
        for role, target in roles:
            found = re.fullmatch(r"(.*?)\s*<([^<>]+)>", target)
            target = found.group(2) if found else target
            if role == "ref" and target not in labels:
                problems.append(f"{r.name}: no section labelled ({target})= in chapters/*.ipynb or book/*.md")
            if role == "doc":
                base = (PAGE.parent / target).resolve()
                if not any(base.with_suffix(s).exists() for s in (".md", ".ipynb")):
                    problems.append(f"{r.name}: {{doc}} target {target!r} is not a page next to book/paper_index.md")
    assert not problems, "\n".join(problems) + f"\n{FIX}"
