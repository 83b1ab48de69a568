"""Drawing a figure into the page."""

from __future__ import annotations


def chart(placeholder, figure, key: str) -> None:
    """Draw a figure into a placeholder. Keys must differ within a run: redraws of one chart use a counter."""
    placeholder.plotly_chart(figure, key=key, config={"displaylogo": False})

