"""Plotly figures of the dashboard and the small pure helpers behind them (no Streamlit calls here).

The heatmap is drawn as a heatmap trace for the colours plus an invisible scatter trace with one marker per
cell: Plotly heatmaps cannot be box- or click-selected, scatter points can, so selections arrive as the
scatter's ``point_index`` and ``cells[i]`` says which (layer, metric) that is.
"""
from __future__ import annotations

import io
import re
import shlex
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from plasticity_core import directions
from plasticity_core.metrics import METRICS

# Okabe-Ito, colour-blind safe; the baseline is always grey and each strategy keeps its colour everywhere
BASELINE_COLOUR = "#7f7f7f"
STRATEGY_COLOURS = {"fire": "#0072B2", "reset": "#D55E00", "shrink_perturb": "#009E73", "redo": "#E69F00",
                    "cbp": "#CC79A7", "targeted": "#56B4E9"}
SPARE_COLOURS = ["#000000", "#F0E442", "#882255", "#44AA99"]
CELL_PX = 20  # one heatmap row: fits a 12 px label with room to spare
LABEL_PX = 12
CELLS_TRACE = 3  # index of the selectable scatter trace (after the three heatmap traces)
WORSE_SCALE = [[0.0, "#f7f7f7"], [0.5, "#f4a582"], [1.0, "#b2182b"]]  # light = better, dark red = worse
NEUTRAL_SCALE = [[0.0, "#f7fbff"], [1.0, "#2166ac"]]  # neither better nor worse: low -> high in blue


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


ROBUST_PCT = (5, 95)  # the heatmap's colour scale spans these percentiles of each column; beyond them it saturates


def robust_columns(wide: pd.DataFrame, pct: tuple[float, float] = ROBUST_PCT) -> pd.DataFrame:
    """Per-metric scaling to [0, 1] between the column's ``pct`` percentiles (clipped beyond them), so one outlier
    layer does not set the scale and paint every other layer alike; a constant column maps to 0; NaN stays NaN."""
    lo = wide.quantile(pct[0] / 100, numeric_only=True, interpolation="higher")  # actual layers' values: with few
    hi = wide.quantile(pct[1] / 100, numeric_only=True, interpolation="lower")  # layers, not halfway to an outlier
    few = ~(hi > lo)  # too few distinct layers for percentiles: min to max
    lo, hi = lo.where(~few, wide.min(numeric_only=True)), hi.where(~few, wide.max(numeric_only=True))
    span = (hi - lo).where(hi > lo, other=np.inf)
    return ((wide - lo) / span).clip(0, 1).where(wide.notna())


# metrics that grow with a layer's width, coloured per unit of width (the hover shows the raw value and this one)
WIDTH_NORMALISED = {
    "stable_rank": "stable_rank / min(d_out, d_in) per tap: the share of the possible rank used (a depthwise tap "
                   "has d_in = 1, so 1.0 is its full rank, not its worst)",
    "feature_erank": "feature_erank / min(units, probe images): the share of the rank the probe could show (the "
                     "pooled features of N images have rank <= N)",
    "grad_norm": "grad_norm / fro_norm: the relative gradient (a wide layer has a large gradient norm because it "
                 "has many weights)",
}


def width_normalised(wide: pd.DataFrame, layers: pd.DataFrame, samples: int | None = None) -> pd.DataFrame:
    """``wide`` with the ``WIDTH_NORMALISED`` metrics divided by their width measure (from the diagnosis' layer
    meta: ``name``, ``units``, ``shape``); other metrics unchanged. Used for colour only."""
    out = wide.copy()
    if not len(layers):
        return out
    meta = layers.set_index("name").reindex(out.index)
    if "stable_rank" in out.columns and "shape" in meta.columns:
        width = meta["shape"].map(lambda s: float(min(s[0], s[1])) if isinstance(s, (list, tuple)) and len(s) >= 2 else np.nan)
        out["stable_rank"] = out["stable_rank"] / width
    if "feature_erank" in out.columns and "units" in meta.columns:
        units = meta["units"].astype(float)
        out["feature_erank"] = out["feature_erank"] / (units.clip(upper=float(samples)) if samples else units)
    if "grad_norm" in out.columns and "fro_norm" in out.columns:
        out["grad_norm"] = out["grad_norm"] / out["fro_norm"].where(out["fro_norm"] > 0)
    return out


def badness(wide: pd.DataFrame, worse: Mapping[str, str | None], robust: bool = False) -> pd.DataFrame:
    """Per metric, 0 = the best layer and 1 = the worst ("high" metrics as is, "low" metrics flipped); metrics with
    no direction keep low -> high. ``robust``: between the 5th and 95th percentile layers (``robust_columns``)
    instead of min to max."""
    norm = robust_columns(wide) if robust else normalise_columns(wide)
    for m in norm.columns:
        if worse.get(m) == "low":
            norm[m] = 1 - norm[m]
    return norm


def constant_columns(wide: pd.DataFrame) -> dict[str, str]:
    """Metrics with the same value in every layer (or no value at all): metric -> what that value is."""
    out = {}
    for m in wide.columns:
        col = wide[m].dropna()
        if col.empty:
            out[m] = "n/a for every layer"
        elif col.nunique() == 1:
            out[m] = f"{_fmt(col.iloc[0])} in every layer" + (f" ({wide[m].isna().sum()} n/a)" if wide[m].isna().any() else "")
    return out


def _wrap(text: str, width: int = 56) -> str:
    return "<br>".join(textwrap.wrap(text, width)) if text else ""


def heatmap(wide: pd.DataFrame, stages: Mapping[str, str], definitions: Mapping[str, str],
            selected: Sequence[str] = (), worse: Mapping[str, str | None] | None = None,
            plain: Mapping[str, str] | None = None,
            colour_by: pd.DataFrame | None = None) -> tuple[go.Figure, list[tuple[str, str]]]:
    """Layers (rows, network order, stage bands) x metrics (columns), coloured so that worse is always darker red.

    Metrics with a direction (``worse[m]`` "high" or "low") share one red scale: per metric the best layer is
    white, the worst dark red. Metrics without one (norms, movement from pretrained) use a blue low -> high scale.
    n/a cells (a metric that does not apply to a layer) are grey and say n/a. Returns the figure and ``cells``:
    the (layer, metric) of each point of the selectable scatter trace. Selected layers get an outline.
    """
    worse, plain = dict(worse or {}), dict(plain or {})
    layers, metrics = list(wide.index), list(wide.columns)
    # ``colour_by``: the values the colours come from (width-normalised, robustly scaled); the hover shows both
    norm = badness(wide, worse) if colour_by is None else badness(colour_by.reindex(index=wide.index, columns=wide.columns), worse, robust=True)
    cells, xs, ys, custom = [], [], [], []
    for i, layer in enumerate(layers):
        for j, metric in enumerate(metrics):
            cells.append((layer, metric))
            xs.append(j)
            ys.append(i)
            raw = wide.iat[i, j]
            direction = {"high": "higher is worse", "low": "lower is worse"}.get(worse.get(metric), "neither good nor bad")
            note = "n/a: this metric does not apply to this layer" if _fmt(raw) == "n/a" else direction
            if colour_by is not None and metric in WIDTH_NORMALISED and metric in colour_by.columns and _fmt(raw) != "n/a":
                note += f"; coloured by {metric.split('_')[0]} per width = {_fmt(colour_by.at[layer, metric])}"
            custom.append([layer, stages.get(layer, ""), metric, _fmt(raw), note,
                           _wrap(plain.get(metric) or definitions.get(metric, ""))])
    directed = [j for j, m in enumerate(metrics) if worse.get(m) in ("high", "low")]
    neutral = [j for j, m in enumerate(metrics) if worse.get(m) not in ("high", "low")]
    fig = go.Figure()
    for cols, scale, title, bar_y in ((directed, WORSE_SCALE, "worse →<br>(per metric)", 0.75),
                                      (neutral, NEUTRAL_SCALE, "low → high<br>(no direction)", 0.25)):
        z = np.full(norm.shape, np.nan)
        z[:, cols] = norm.to_numpy(float)[:, cols]
        fig.add_trace(go.Heatmap(z=z, x=list(range(len(metrics))), y=list(range(len(layers))), colorscale=scale,
                                 zmin=0, zmax=1, hoverinfo="skip", xgap=1, ygap=1, showscale=bool(cols),
                                 colorbar=dict(title=dict(text=title, font=dict(size=11)), thickness=10, len=0.45,
                                               y=bar_y, tickvals=[0, 1], ticktext=["best", "worst"] if scale is WORSE_SCALE else ["low", "high"])))
    missing = np.where(np.isnan(norm.to_numpy(float)), 1.0, np.nan)
    fig.add_trace(go.Heatmap(z=missing, x=list(range(len(metrics))), y=list(range(len(layers))), zmin=0, zmax=1,
                             colorscale=[[0, "#d9d9d9"], [1, "#d9d9d9"]], showscale=False, hoverinfo="skip", xgap=1, ygap=1))
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="markers", customdata=custom, showlegend=False, name="cells",
        marker=dict(symbol="square", size=CELL_PX, opacity=0), selected=dict(marker=dict(opacity=0)),
        unselected=dict(marker=dict(opacity=0)),
        hovertemplate="<b>%{customdata[0]}</b> (%{customdata[1]})<br>%{customdata[2]} = <b>%{customdata[3]}</b>"
                      " · %{customdata[4]}<br><i>%{customdata[5]}</i><extra></extra>"))
    na = [(j, i) for i in range(len(layers)) for j in range(len(metrics)) if np.isnan(norm.iat[i, j])]
    if na:
        fig.add_trace(go.Scatter(x=[j for j, _ in na], y=[i for _, i in na], mode="text", text=["n/a"] * len(na),
                                 textfont=dict(size=10, color="#555"), hoverinfo="skip", showlegend=False, name="n/a"))
    _stage_bands(fig, layers, stages, len(metrics))
    for name in selected:
        if name in layers:
            i = layers.index(name)
            fig.add_shape(type="rect", x0=-0.5, x1=len(metrics) - 0.5, y0=i - 0.5, y1=i + 0.5,
                          line=dict(color="#000000", width=2))
    fig.update_layout(
        height=max(360, CELL_PX * len(layers) + 150), margin=dict(l=10, r=10, t=110, b=10),
        dragmode="zoom",  # Streamlit turns click-to-select off while dragmode is select or lasso; the toolbar has both
        clickmode="event+select", hovermode="closest", plot_bgcolor="white",
        hoverlabel=dict(font=dict(size=12), align="left", namelength=-1),
        xaxis=dict(tickvals=list(range(len(metrics))), ticktext=metrics, side="top", tickangle=-35,
                   tickfont=dict(size=LABEL_PX), showgrid=False, zeroline=False),
        yaxis=dict(tickvals=list(range(len(layers))), ticktext=layers, autorange="reversed",
                   tickfont=dict(size=LABEL_PX), showgrid=False, zeroline=False),
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
    """The layers touched by a Plotly selection event (clicked points, a box or a lasso), in network order.

    A box or lasso reports the scatter points inside it; a click reports the clicked point, and depending on
    where it lands it names the cell by its customdata, by its index in the cells trace, or only by its (x, y)
    position (rows are layers): each form is read.
    """
    if not selection:
        return []
    picked = set()
    for point in selection.get("points", []):
        custom = point.get("customdata")
        idx = point.get("point_index", point.get("point_number"))
        if isinstance(custom, (list, tuple)) and custom and custom[0] in order:
            picked.add(custom[0])
        elif point.get("curve_number") == CELLS_TRACE and isinstance(idx, int) and 0 <= idx < len(cells):
            picked.add(cells[idx][0])
        elif isinstance(point.get("y"), (int, float)) and float(point["y"]).is_integer() and 0 <= point["y"] < len(order):
            picked.add(order[int(point["y"])])
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


def arm_colours(arms: Sequence[str], strategies: Mapping[str, str] | None = None) -> dict[str, str]:
    """A fixed colour per arm: grey for a plain fine-tune, the strategy's own colour otherwise (Okabe-Ito)."""
    strategies = dict(strategies or {})
    out, spare = {}, iter(SPARE_COLOURS * 4)
    for arm in arms:
        strategy = strategies.get(arm, arm)
        if strategy in ("none", "baseline", None):
            out[arm] = BASELINE_COLOUR
        elif strategy in STRATEGY_COLOURS and STRATEGY_COLOURS[strategy] not in out.values():
            out[arm] = STRATEGY_COLOURS[strategy]
        else:
            out[arm] = next(spare)
    return out


def diagnosis_parquet(d: Any) -> bytes:
    """The diagnosis as parquet bytes (``Diagnosis.save``); Export calls it when its button is pressed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "diagnosis.parquet"
        d.save(path)
        return path.read_bytes()


def heatmap_html(d: Any) -> str:
    """The diagnosis heatmap as self-contained HTML (several MB with plotly.js); Export renders it on request."""
    wide = d.wide()
    stages = {r["name"]: stage_of(r["group"]) for r in d.meta["layers"]}
    fig, _ = heatmap(wide, stages, {m: METRICS[m].definition for m in d.metrics},
                     worse={m: directions.worse(m) for m in d.metrics}, plain=directions.PLAIN,
                     colour_by=width_normalised(wide, d.layers(), d.meta.get("samples")))
    buf = io.StringIO()
    fig.write_html(buf, include_plotlyjs=True, full_html=True)
    return buf.getvalue()


def launch_plan(n_runs: int, parallel: int, steps: int, seconds_per_step: float | None) -> str:
    """The launch plan in words: "6 runs, 2 at a time, ~3 min" (the time from a past run of the same setup)."""
    if n_runs < 1:
        return "No arm chosen: nothing to launch."
    at_once = min(parallel, n_runs)
    text = f"{n_runs} run{'s' if n_runs != 1 else ''}, {'one' if at_once == 1 else at_once} at a time"
    if seconds_per_step is None:
        return text + " (time unknown until a run of this setup has finished; the progress table shows an ETA)."
    waves = -(-n_runs // at_once)
    minutes = waves * steps * seconds_per_step / 60
    return text + f", ~{max(1, round(minutes))} min (from a finished run of this setup; runs at once share the machine)."


def reinit_argv(setup: Mapping[str, Any], num_classes: int | str) -> list[str]:
    """The ``plasticity reinit`` command line that applies the exported config to this setup's model (the fresh
    head's seed comes from the config's ``head_seed``, the one the preview used)."""
    argv = ["plasticity", "reinit", "--config", "reinit_config.yaml", "--model", str(setup["backbone"])]
    if setup.get("arch"):
        argv += ["--arch", str(setup["arch"])]
    if not setup.get("pretrained", True):
        argv.append("--random-init")
    argv += ["--num-classes", str(num_classes), "--data", str(setup["data"]), "--image-size", str(setup["image_size"])]
    if setup.get("limit"):
        argv += ["--limit", str(setup["limit"])]
    return argv + ["--out", "reinit_weights.safetensors"]


def shell(argv: Sequence[str]) -> str:
    """``argv`` as one shell line, every word quoted where needed (pasting it never runs anything else)."""
    return " ".join(shlex.quote(a) for a in argv)


def python_snippet(setup: Mapping[str, Any], num_classes: int | str) -> str:
    """Python that rebuilds exactly this setup (weights source, random init, arch, data, size, limit) and applies
    the exported config; every value is a Python literal (repr), never pasted text."""
    bb_args = [repr(setup["backbone"])]
    if not setup.get("pretrained", True):
        bb_args.append("pretrained=False")
    if setup.get("arch"):
        bb_args.append(f"arch={setup['arch']!r}")
    bb_args.append(f"num_classes={num_classes}")
    bb_args.append("seed=cfg.head_seed")  # the fresh head the preview used
    data_args = [repr(setup["data"]), f"image_size={int(setup['image_size'])}"]
    if setup.get("limit"):
        data_args.append(f"limit={int(setup['limit'])}")
    data_args.append("data_config=bb.data_config")
    probe = ("pc.probe_head(bb, data.train, steps=cfg.head_probe_steps, seed=cfg.head_seed)  # as in the preview\n"
             if int(setup.get("head_probe_steps", 0)) else "")
    return (f"import plasticity_core as pc\n\n"
            f"cfg = pc.ReinitConfig.load(\"reinit_config.yaml\")\n"
            f"bb = pc.load_backbone({', '.join(bb_args)})\n"
            f"data = pc.load_dataset({', '.join(data_args)})\n"
            f"{probe}"
            f"report = pc.apply_reinit(bb.model, cfg, data=data.train)  # recalibrates BatchNorm on your data\n"
            f"print(report.table)")
