"""Small helpers the chapters share, so that no notebook redefines them."""

from __future__ import annotations

import inspect


def show_source(obj) -> None:
    """Render the library's own source of `obj` in a notebook, so that the book and the code cannot drift apart."""
    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{inspect.getsource(obj)}```"))
