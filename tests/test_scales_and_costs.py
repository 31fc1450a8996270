"""Issue 31 item 8 and issue 28 item 7: plots keep ordinal scales in order; cost per kept session and item."""

from __future__ import annotations

import polars as pl
from matplotlib.figure import Figure

from personaloom.explore import _bar_counts, bar_counts, scale_orders


def test_ordinal_scales_are_plotted_in_scale_order_not_by_count() -> None:
    orders = scale_orders()
    assert orders["formality"] == ["very casual", "casual", "neutral", "formal", "very formal"]
    assert set(orders) == {"formality", "verbosity", "proactivity"}
    # the most frequent value is the highest level: by count it would come first
    values = pl.Series("formality", ["very formal"] * 5 + ["casual"] + ["neutral"] * 3 + ["off-scale"] * 2)
    labels, sizes = bar_counts(values, orders["formality"])
    assert labels == ["casual", "neutral", "very formal", "off-scale"]
    assert sizes == [1, 3, 5, 2]
    assert bar_counts(values)[0] == ["very formal", "neutral", "off-scale", "casual"]  # nominal: by count
    ax = Figure().subplots()
    _bar_counts(ax, values, "formality", orders["formality"])
    bars = sorted(ax.patches, key=lambda b: -b.get_y())  # top bar first
    ticks = {round(t.get_position()[1]): t.get_text() for t in ax.get_yticklabels()}
    assert [ticks[round(b.get_y() + b.get_height() / 2)] for b in bars] == labels
