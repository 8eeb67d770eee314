"""Sphinx extension: show alignlib's docstrings verbatim on the library-reference page.

alignlib's docstrings are written for readers of the code: shapes such as
``[B, T]``, equations in plain Unicode (``|y|``, ``G_i − G_j``) and aligned
columns. Parsed as reStructuredText they would turn into substitutions,
block quotes and definition lists (and warnings, which fail the ``-W`` book
build), so each docstring is shown as a literal block, as ``help()`` shows it.
"""

from __future__ import annotations


def _as_literal_block(app, what, name, obj, options, lines: list[str]) -> None:
    if not any(line.strip() for line in lines):
        return
    body = [("    " + line) if line.strip() else "" for line in lines]
    while body and not body[-1]:
        body.pop()
    lines[:] = ["::", "", *body, ""]


def setup(app):
    app.connect("autodoc-process-docstring", _as_literal_block)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
