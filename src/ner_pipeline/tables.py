"""Plain-text tables for the command line, drawn by `rich` (which Typer already brings).

Tables are rendered to a string without colour and without a width limit, so a cell is never wrapped or cut and
the output reads the same in a terminal, a pipe or a test.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table


def render_table(header: Sequence[str], rows: Iterable[Sequence[object]], right: Collection[int] = ()) -> str:
    """Align rows into columns under a header and a rule.

    Args:
        header: Column titles.
        rows: One sequence of cells per row; cells are shown with `str`, never read as rich markup.
        right: Indexes of the columns to right-align (numbers).

    Returns:
        The table, one line per row, without trailing spaces.
    """
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
    for index, title in enumerate(header):
        table.add_column(title, justify="right" if index in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    out = io.StringIO()
    console = Console(file=out, width=100_000, color_system=None, markup=False, emoji=False, highlight=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
