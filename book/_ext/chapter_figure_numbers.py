"""Sphinx extension: number figures per chapter, as "Fig. 4.3" or "Fig. 3b.2".

Sphinx numbers figures across the whole book unless the table of contents is
numbered, and this book's chapter numbers are part of the chapter titles
("4. The DPO family", "3b. Around the RL step"), not of the table of contents.
After Sphinx has assigned its book-wide numbers, this renumbers each chapter's
captioned figures (and other numbered elements) from 1, prefixed by the number
in the chapter's file name (chapters/04_dpo_family -> 4, 03b_beyond_ppo -> 3b).
Captions and {numref} references both read these numbers.
"""

from __future__ import annotations

import re

CHAPTER_FILE = re.compile(r"^chapters/0*(\d+[a-z]?)_")


def _renumber_per_chapter(app, env) -> list[str]:
    for docname, by_type in env.toc_fignumbers.items():
        found = CHAPTER_FILE.match(docname)
        if not found:
            continue
        for figtype, numbers in by_type.items():
            in_order = sorted(numbers, key=numbers.get)
            by_type[figtype] = {figure_id: (found.group(1), i) for i, figure_id in enumerate(in_order, 1)}
    return []


def setup(app):
    # after the toctree collector (priority 500) has assigned the book-wide numbers
    app.connect("env-get-updated", _renumber_per_chapter, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
