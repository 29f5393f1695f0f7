"""Figures of the Fine-tune page's run views: curves as a TensorBoard / W&B user reads them, and per-layer
snapshots over training (layers x steps) with their difference to the baseline. Built from the tables of
``plasticity_core.runs.frames``; no computation beyond layout."""
from __future__ import annotations

import shlex
from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.views import BASELINE_COLOUR
from plasticity_core.runs.frames import ENDED_EARLY

X_TITLES = {"step": "step", "time": "relative time (s)"}


def curve_figure(points: pd.DataFrame, band: pd.DataFrame, metric: str, title: str, colours: Mapping[str, str],
                 x: str = "step", per_seed: bool = False, log_y: bool = False, percent: bool = False,
                 smoothing: float = 0.0) -> go.Figure:
    """One metric of every arm: per-seed lines or the mean over seeds with a min-max band, smoothed, with the raw
    values faint behind when smoothing is on; hover shows every arm at the hovered x (unified). Runs that ended early
    (stopped, failed, cancelled) are outside the mean, each a dashed line labelled with its status."""
    fig = go.Figure()
    scale, unit = (100.0, "%") if percent else (1.0, "")
    fmt = ".1f" if percent else ".4g"
    for arm in dict.fromkeys(points["arm"]):
        colour = colours.get(arm, BASELINE_COLOUR)
        if per_seed:
            for seed, g in points[points["arm"] == arm].groupby("seed", sort=True):
                label = f"{arm} · seed {seed}"
                if smoothing > 0:
                    fig.add_trace(go.Scatter(x=g[x].to_numpy(float), y=g["value"].to_numpy(float) * scale, mode="lines", line=dict(color=_rgba(colour, 0.25), width=1),
                                             hoverinfo="skip", showlegend=False, legendgroup=label, name=f"{label} raw"))
                fig.add_trace(go.Scatter(x=g[x].to_numpy(float), y=g["smoothed"].to_numpy(float) * scale, mode="lines", name=label, legendgroup=label,
                                         line=dict(color=colour, width=1.6),
                                         hovertemplate=f"{label}: %{{y:{fmt}}}{unit}<extra></extra>"))
            continue
        ended = points[(points["arm"] == arm) & points["status"].isin(ENDED_EARLY)] if "status" in points else points[:0]
        for seed, g in ended.groupby("seed", sort=True):  # not in the mean: each its own dashed line
            label = f"{arm} seed {seed} ({g['status'].iloc[0]})"
            fig.add_trace(go.Scatter(x=g[x].to_numpy(float), y=g["smoothed"].to_numpy(float) * scale, mode="lines", name=label, legendgroup=str(arm),
                                     line=dict(color=colour, width=1, dash="dash"),
                                     hovertemplate=f"{label}: %{{y:{fmt}}}{unit}<extra></extra>"))
        b = band[band["arm"] == arm]
        if b.empty:
            continue
        lo, n = int(b["n_seeds"].min()), int(b["n_seeds"].max())
        seeds = f"{n} seeds" if lo == n else f"{lo}-{n} seeds, per step"  # the mean covers the seeds present at each step
        label = f"{arm} (mean of {seeds})" if n > 1 else str(arm)
        if n > 1:
            xs, hi, lo = b[x].to_numpy(float), b["max"].to_numpy(float) * scale, b["min"].to_numpy(float) * scale
            fig.add_trace(go.Scatter(x=np.concatenate([xs, xs[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                                     fill="toself", mode="lines", fillcolor=_rgba(colour, 0.15), line=dict(width=0, color=colour),
                                     hoverinfo="skip", showlegend=False, legendgroup=str(arm), name=f"{arm} min-max"))
        if smoothing > 0:
            fig.add_trace(go.Scatter(x=b[x].to_numpy(float), y=b["raw_mean"].to_numpy(float) * scale, mode="lines", line=dict(color=_rgba(colour, 0.25), width=1),
                                     hoverinfo="skip", showlegend=False, legendgroup=str(arm), name=f"{arm} raw"))
        fig.add_trace(go.Scatter(x=b[x].to_numpy(float), y=b["mean"].to_numpy(float) * scale, mode="lines+markers" if len(b) <= 60 else "lines",
                                 name=label, legendgroup=str(arm), line=dict(color=colour, width=2), marker=dict(size=4),
                                 hovertemplate=f"{arm}: %{{y:{fmt}}}{unit}<extra></extra>"))
    smooth_note = f" · smoothed {smoothing:g}" if smoothing > 0 else ""
    fig.update_layout(height=300, title=dict(text=title + smooth_note, font=dict(size=14)), hovermode="x unified",
                      margin=dict(l=10, r=10, t=40, b=10), xaxis_title=X_TITLES.get(x, x), plot_bgcolor="white",
                      yaxis_title=f"{metric} (%)" if percent else metric, legend=dict(orientation="h", y=-0.3))
    fig.update_xaxes(gridcolor="#eee", rangemode="tozero")
    fig.update_yaxes(gridcolor="#eee", type="log" if log_y else "linear")
    if percent and not log_y:
        fig.update_yaxes(range=[0, 100], ticksuffix="%")
    return fig


def snapshot_heatmap(matrix: pd.DataFrame, title: str, diverging: bool = False, colorbar: str = "") -> go.Figure:
    """Layers (rows, network order) x steps (columns) of one metric; ``diverging``: a difference centred on 0
    (red = arm higher than baseline, blue = lower)."""
    z = matrix.to_numpy(float)
    steps = [int(s) if float(s).is_integer() else s for s in matrix.columns]
    if diverging:
        lim = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
        kw = dict(colorscale="RdBu_r", zmid=0, zmin=-(lim or 1.0), zmax=lim or 1.0)
    else:
        kw = dict(colorscale="Viridis")
    fig = go.Figure(go.Heatmap(z=z, x=[str(s) for s in steps], y=list(matrix.index), xgap=1, ygap=0,
                               colorbar=dict(title=dict(text=colorbar, font=dict(size=11)), thickness=10),
                               hovertemplate="%{y}<br>step %{x}: %{z:.4g}<extra></extra>", **kw))
    fig.update_layout(height=max(320, 11 * len(matrix.index) + 120), title=dict(text=title, font=dict(size=14)),
                      margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white")
    fig.update_xaxes(title="step", type="category", tickangle=0)
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=9))
    return fig


def tensorboard_line(root: str) -> str:
    """The command that opens the store's TensorBoard event files (the path shell-quoted)."""
    return f"tensorboard --logdir {shlex.quote(str(root))}"


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
