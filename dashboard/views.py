"""Plotly figures of the dashboard and the small pure helpers behind them (no Streamlit calls here).

The heatmap is drawn as a heatmap trace for the colours plus an invisible scatter trace with one marker per
cell: Plotly heatmaps cannot be box- or click-selected, scatter points can, so selections arrive as the
scatter's ``point_index`` and ``cells[i]`` says which (layer, metric) that is.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

ARM_COLOURS = ["#636e72", "#2f6f4f", "#c0392b", "#2c7fb8", "#d68910", "#8e44ad", "#16a085"]
CELL_PX = 15


def stage_of(group: str) -> str:
    """The network stage of a layer group: up to the first dotted part holding a digit ('blocks.1.0' -> 'blocks.1',
    'layer2.1' -> 'layer2'); groups without digits ('stem', 'head') are their own stage."""
    parts = str(group).split(".")
    for i, part in enumerate(parts):
        if re.search(r"\d", part):
            return ".".join(parts[: i + 1])
    return str(group)


def normalise_columns(wide: pd.DataFrame) -> pd.DataFrame:
    """Per-metric min-max scaling to [0, 1]; a constant column maps to 0; NaN stays NaN."""
    lo, hi = wide.min(), wide.max()
    span = (hi - lo).where(hi > lo, other=np.inf)
    return (wide - lo) / span


def heatmap(wide: pd.DataFrame, stages: Mapping[str, str], definitions: Mapping[str, str],
            selected: Sequence[str] = ()) -> tuple[go.Figure, list[tuple[str, str]]]:
    """Layers (rows, network order, stage bands) x metrics (columns), coloured per-metric normalised.

    Returns the figure and ``cells``: the (layer, metric) of each point of the selectable scatter trace.
    Selected layers get an outline.
    """
    layers, metrics = list(wide.index), list(wide.columns)
    norm = normalise_columns(wide)
    cells, xs, ys, custom = [], [], [], []
    for i, layer in enumerate(layers):
        for j, metric in enumerate(metrics):
            cells.append((layer, metric))
            xs.append(j)
            ys.append(i)
            raw, scaled = wide.iat[i, j], norm.iat[i, j]
            custom.append([layer, stages.get(layer, ""), metric, _fmt(raw), _fmt(scaled), definitions.get(metric, "")])
    fig = go.Figure()
    fig.add_trace(go.Heatmap(z=norm.to_numpy(float), x=list(range(len(metrics))), y=list(range(len(layers))),
                             colorscale="Viridis", zmin=0, zmax=1, hoverinfo="skip", xgap=1, ygap=1,
                             colorbar=dict(title="per-metric<br>min→max", thickness=12)))
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="markers", customdata=custom, showlegend=False, name="cells",
        marker=dict(symbol="square", size=CELL_PX - 3, opacity=0), selected=dict(marker=dict(opacity=0)),
        unselected=dict(marker=dict(opacity=0)),
        hovertemplate="<b>%{customdata[0]}</b> (%{customdata[1]})<br>%{customdata[2]} = %{customdata[3]}"
                      " (normalised %{customdata[4]})<br><i>%{customdata[5]}</i><extra></extra>"))
    _stage_bands(fig, layers, stages, len(metrics))
    for name in selected:
        if name in layers:
            i = layers.index(name)
            fig.add_shape(type="rect", x0=-0.5, x1=len(metrics) - 0.5, y0=i - 0.5, y1=i + 0.5,
                          line=dict(color="#e74c3c", width=2))
    fig.update_layout(
        height=max(320, CELL_PX * len(layers) + 170), margin=dict(l=10, r=10, t=90, b=10), dragmode="select",
        clickmode="event+select", hovermode="closest",
        xaxis=dict(tickvals=list(range(len(metrics))), ticktext=metrics, side="top", tickangle=-30),
        yaxis=dict(tickvals=list(range(len(layers))), ticktext=layers, autorange="reversed", tickfont=dict(size=10)),
    )
    return fig, cells


def _stage_bands(fig: go.Figure, layers: list[str], stages: Mapping[str, str], n_metrics: int) -> None:
    """A line between stages and the stage name at the right edge of its rows."""
    start = 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or stages.get(layers[i]) != stages.get(layers[start]):
            if i < len(layers):
                fig.add_shape(type="line", x0=-0.5, x1=n_metrics - 0.5, y0=i - 0.5, y1=i - 0.5,
                              line=dict(color="white", width=3))
            fig.add_annotation(x=n_metrics - 0.45, y=(start + i - 1) / 2, text=stages.get(layers[start], ""),
                               showarrow=False, xanchor="left", font=dict(size=10, color="#555"))
            start = i
    fig.update_xaxes(range=[-0.5, n_metrics + 1.2])


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4g}"


def layers_from_selection(selection: Mapping[str, Any] | None, cells: Sequence[tuple[str, str]],
                          order: Sequence[str]) -> list[str]:
    """The layers touched by a Plotly selection event (clicked points, a box or a lasso), in network order."""
    if not selection:
        return []
    picked = set()
    for point in selection.get("points", []):
        idx = point.get("point_index", point.get("point_number"))
        if point.get("curve_number", 1) == 1 and idx is not None and 0 <= idx < len(cells):
            picked.add(cells[idx][0])
    return [name for name in order if name in picked]


def unit_histogram(scores: np.ndarray, layer: str, metric: str, threshold: float | None = None) -> go.Figure:
    """Distribution of one layer's per-unit scores, with the metric's threshold as a dashed line."""
    fig = go.Figure(go.Histogram(x=scores, nbinsx=min(60, max(10, len(scores) // 4)), marker_color="#2f6f4f"))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="#c0392b", annotation_text=f"threshold {threshold:g}")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=40, b=10), bargap=0.05,
                      title=f"{metric} unit scores of {layer} ({len(scores)} units)", xaxis_title=metric,
                      yaxis_title="units")
    return fig


def preview_chart(table: pd.DataFrame) -> go.Figure:
    """Per layer: DfI (scale-invariant) before/after and the relative SFE the re-init causes."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("DfI_si before → after (0 = isometry)",
                                                        "SFE_rel = ||W'−W||² / ||W||²"))
    fig.add_trace(go.Bar(x=table["layer"], y=table["dfi_si_before"], name="before", marker_color="#95a5a6"), 1, 1)
    fig.add_trace(go.Bar(x=table["layer"], y=table["dfi_si_after"], name="after", marker_color="#2f6f4f"), 1, 1)
    fig.add_trace(go.Bar(x=table["layer"], y=table["sfe_rel"], name="SFE_rel", marker_color="#c0392b"), 1, 2)
    fig.update_layout(height=360, barmode="group", margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.35))
    fig.update_xaxes(tickangle=-40, tickfont=dict(size=9))
    return fig


def curves(points: pd.DataFrame, metric: str, title: str) -> go.Figure:
    """One line per arm (mean over seeds) with a min-max band over seeds; ``points``: arm, seed, step, metric, value."""
    fig = go.Figure()
    data = points[points["metric"] == metric]
    for k, (arm, g) in enumerate(data.groupby("arm", sort=False)):
        colour = ARM_COLOURS[k % len(ARM_COLOURS)]
        stats = g.groupby("step")["value"].agg(["mean", "min", "max", "count"]).reset_index()
        if g["seed"].nunique() > 1:
            fig.add_trace(go.Scatter(x=list(stats["step"]) + list(stats["step"][::-1]),
                                     y=list(stats["max"]) + list(stats["min"][::-1]), fill="toself",
                                     fillcolor=_rgba(colour, 0.18), line=dict(width=0), hoverinfo="skip",
                                     showlegend=False, legendgroup=arm))
        fig.add_trace(go.Scatter(x=stats["step"], y=stats["mean"], mode="lines+markers", name=str(arm),
                                 line=dict(color=colour), marker=dict(size=4), legendgroup=arm))
    fig.update_layout(height=300, title=title, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="step",
                      yaxis_title=metric, legend=dict(orientation="h", y=-0.25))
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
