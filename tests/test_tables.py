"""The command line's tables: aligned, never wrapped or cut, cells shown as written."""

from __future__ import annotations

from ner_pipeline.tables import render_table


def test_table_aligns_columns_under_a_header_rule_and_keeps_cells_whole():
    long = "x" * 300
    text = render_table(("stage", "inputs"), [("ingest", "-"), ("train", f"[bold]{long}[/bold]")], right=())
    header, rule, *rows = text.splitlines()
    assert header.split() == ["stage", "inputs"] and set(rule) == {"─"}
    assert rows[1].split() == ["train", f"[bold]{long}[/bold]"]  # no markup read, no wrapping
    assert header.index("inputs") == rows[0].index("-") == rows[1].index("[bold]")
    assert all(line == line.rstrip() for line in text.splitlines())


def test_right_aligned_columns_line_up_on_their_last_digit():
    text = render_table(("split", "tokens"), [("train", "14,041"), ("test", "7")], right=(1,))
    lines = text.splitlines()
    assert len({len(line) for line in (lines[0], lines[2], lines[3])}) == 1
