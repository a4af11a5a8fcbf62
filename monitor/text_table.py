"""Plain-text tables for the command line."""

from __future__ import annotations


def render_table(rows: list[list[str]], right: tuple[int, ...] = ()) -> str:
    """Align the cells of `rows` in columns two spaces apart; the columns in `right` are right-aligned."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[column]) if column in right else cell.ljust(widths[column])
            for column, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
