"""A sparkline of closes in unicode blocks, for a table cell (the Markets screen's trend).

Textual's own `Sparkline` widget is a widget, not a cell: a DataTable cell takes text, so the
closes become eight block heights, scaled between the series' own low and high (a flat series
is a flat line), green when the last close is at or above the first, red below it.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

BLOCKS = "▁▂▃▄▅▆▇█"


def spark_blocks(values: Sequence[float], width: int) -> str:
    """The newest `width` of `values` (fewer when there are fewer) as block characters."""
    if width <= 0 or not values:
        return ""
    shown = list(values)[-width:]
    low, high = min(shown), max(shown)
    if high <= low:
        return BLOCKS[len(BLOCKS) // 2 - 1] * len(shown)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[round((v - low) / (high - low) * top)] for v in shown)


def sparkline(values: Sequence[float], width: int) -> Text:
    """`spark_blocks`, coloured by the direction over the span shown."""
    blocks = spark_blocks(values, width)
    if not blocks:
        return Text("")
    shown = list(values)[-width:]
    return Text(blocks.rjust(width), style="green" if shown[-1] >= shown[0] else "red")
