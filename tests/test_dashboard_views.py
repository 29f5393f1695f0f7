"""The dashboard's figure helpers: normalisation, stage grouping, heatmap cells and selection, curves."""
import numpy as np
import pandas as pd
import shlex

import pytest

from dashboard import views
from plasticity_core.cli import build_parser


def test_stage_of_groups_blocks_by_their_first_numbered_part():
    assert views.stage_of("blocks.1.0") == "blocks.1"
    assert views.stage_of("layer2.1") == "layer2"
    assert views.stage_of("blocks.6") == "blocks.6"
    assert views.stage_of("stem") == "stem" and views.stage_of("head") == "head"


def test_normalise_columns_is_min_max_per_metric():
    wide = pd.DataFrame({"a": [2.0, 4.0, 3.0], "b": [5.0, 5.0, 5.0], "c": [1.0, np.nan, 0.0]}, index=list("xyz"))
    norm = views.normalise_columns(wide)
    assert norm["a"].tolist() == [0.0, 1.0, 0.5]
    assert norm["b"].tolist() == [0.0, 0.0, 0.0]  # constant column: no spread to show
    assert norm.at["x", "c"] == 1.0 and norm.at["z", "c"] == 0.0 and np.isnan(norm.at["y", "c"])


def _wide():
    return pd.DataFrame({"dormant": [0.1, 0.5, 0.0, 0.2], "feature_erank": [3.0, 1.0, np.nan, 8.0], "fro_norm": [1.0, 2.0, 3.0, 4.0]},
                        index=["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"])


WORSE = {"dormant": "high", "feature_erank": "low"}


def test_heatmap_worse_is_always_the_dark_end_and_n_a_is_marked():
    wide = _wide()
    stages = {"conv1": "conv1", "layer1.0.conv1": "layer1", "layer1.0.conv2": "layer1", "fc": "head"}
    fig, cells = views.heatmap(wide, stages, {"dormant": "def-d", "feature_erank": "def-e", "fro_norm": "def-n"},
                               selected=["fc"], worse=WORSE, plain={"dormant": "silent units"})
    directed, neutral, missing, points, na_text = fig.data
    assert cells == [(l, m) for l in wide.index for m in wide.columns]
    z = np.array(directed.z, dtype=float)
    # dormant: high is worse -> the most dormant layer (0.5) is 1; feature_erank: low is worse -> the lowest (1.0) is 1
    assert z[1, 0] == 1.0 and z[2, 0] == 0.0
    assert z[1, 1] == 1.0 and z[3, 1] == 0.0 and np.isnan(z[2, 1])
    assert np.isnan(z[:, 2]).all() and np.array(neutral.z, dtype=float)[3, 2] == 1.0  # no direction: its own scale
    assert np.array(missing.z, dtype=float)[2, 1] == 1 and list(na_text.text) == ["n/a"] and na_text.x == (1,) and na_text.y == (2,)
    k = cells.index(("fc", "dormant"))
    assert list(points.customdata[k]) == ["fc", "head", "dormant", "0.2", "higher is worse", "silent units"]
    assert points.customdata[cells.index(("layer1.0.conv2", "feature_erank"))][4].startswith("n/a")
    assert [a.text for a in fig.layout.annotations] == ["conv1", "layer1", "head"]
    outlines = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(outlines) == 1 and outlines[0].y0 == 2.5 and outlines[0].y1 == 3.5
    assert fig.layout.yaxis.tickfont.size >= 12 and fig.layout.height >= views.CELL_PX * 4


def test_constant_columns_are_named_with_their_value():
    wide = pd.DataFrame({"sfe": [0.0, 0.0], "dfi": [1.0, 2.0], "dead": [np.nan, np.nan]}, index=["a", "b"])
    assert views.constant_columns(wide) == {"sfe": "0 in every layer", "dead": "n/a for every layer"}


def test_layers_from_selection_reads_clicks_boxes_and_positions():
    wide = _wide()
    _, cells = views.heatmap(wide, {}, {})
    order = list(wide.index)
    # a box reports points of the cells trace, in any order
    sel = {"points": [{"curve_number": views.CELLS_TRACE, "point_index": cells.index(("fc", "dormant"))},
                      {"curve_number": views.CELLS_TRACE, "point_index": cells.index(("layer1.0.conv1", "fro_norm"))}]}
    assert views.layers_from_selection(sel, cells, order) == ["layer1.0.conv1", "fc"]
    # a click as Streamlit delivers it (seen in Chromium): customdata names the layer
    click = {"points": [{"curve_number": views.CELLS_TRACE, "point_index": 5, "x": 2, "y": 1,
                         "customdata": ["layer1.0.conv1", "layer1", "fro_norm", "2", "", ""]}]}
    assert views.layers_from_selection(click, cells, order) == ["layer1.0.conv1"]
    assert views.layers_from_selection({"points": [{"curve_number": 0, "x": 0, "y": 3}]}, cells, order) == ["fc"]
    assert views.layers_from_selection({"points": []}, cells, order) == []
    assert views.layers_from_selection(None, cells, order) == []


def _curve(pts, **kw):
    from dashboard import charts
    from plasticity_core.runs import frames

    pts = pts.assign(time=pts["step"].astype(float), smoothed=pts["value"])
    return charts.curve_figure(pts, frames.mean_band(pts), "val_acc", "acc", **kw)


def test_curves_percent_axis_fixed_colours_and_a_band_without_markers():
    pts = pd.DataFrame({"arm": ["baseline"] * 6 + ["fire"] * 3, "seed": [0, 0, 0, 1, 1, 1, 0, 0, 0],
                        "step": [0, 10, 20] * 3, "value": [0.1, 0.2, 0.4, 0.1, 0.4, 0.8, 0.1, 0.5, 0.6]})
    colours = views.arm_colours(["baseline", "fire"], {"baseline": "none", "fire": "fire"})
    assert colours == {"baseline": views.BASELINE_COLOUR, "fire": views.STRATEGY_COLOURS["fire"]}
    fig = _curve(pts, colours=colours, percent=True)
    band, base, fire = fig.data
    assert list(base.x) == [0, 10, 20]  # the step-0 evaluation is drawn
    assert list(base.y) == pytest.approx([10, 30, 60]) and list(fire.y) == pytest.approx([10, 50, 60])
    assert list(band.y) == pytest.approx([10, 40, 80, 40, 20, 10])  # max forward, min backward, in %
    assert band.mode == "lines" and not band.showlegend
    assert base.line.color == views.BASELINE_COLOUR and fire.line.color == colours["fire"]
    assert tuple(fig.layout.yaxis.range) == (0, 100)


def test_curves_keep_a_stopped_seed_out_of_the_mean_and_label_the_seeds_per_step():
    # baseline seed 1 stopped after step 10; fire seed 1 is still running at step 10 (live)
    pts = pd.DataFrame({"arm": ["baseline"] * 5 + ["fire"] * 5, "seed": [0, 0, 0, 1, 1, 0, 0, 0, 1, 1],
                        "step": [0, 10, 20, 0, 10, 0, 10, 20, 0, 10],
                        "value": [0.1, 0.3, 0.5, 0.1, 0.2, 0.1, 0.4, 0.6, 0.1, 0.2],
                        "status": ["finished"] * 3 + ["stopped"] * 2 + ["finished"] * 3 + ["running"] * 2})
    colours = views.arm_colours(["baseline", "fire"], {"baseline": "none", "fire": "fire"})
    fig = _curve(pts, colours=colours, percent=True)
    names = [t.name for t in fig.data]
    base = next(t for t in fig.data if t.name == "baseline")
    assert list(base.y) == pytest.approx([10, 30, 50])  # the stopped seed's 20 % is not averaged in
    assert "baseline seed 1 (stopped)" in names
    assert next(t for t in fig.data if t.name == "baseline seed 1 (stopped)").line.dash == "dash"
    fire = next(t for t in fig.data if t.name and t.name.startswith("fire (mean"))
    assert fire.name == "fire (mean of 1-2 seeds, per step)" and list(fire.y) == pytest.approx([10, 30, 60])
    band = next(t for t in fig.data if t.name == "fire min-max")
    assert list(band.y) == pytest.approx([10, 40, 60, 60, 20, 10])  # a single seed at step 20: min = max


def test_export_command_is_shell_quoted_and_parses_back():
    setup = {"backbone": "file:/data/it's mine/model.pth", "arch": "timm:resnet18", "pretrained": False,
             "data": "folder:/data/x; rm -rf ~", "image_size": 64, "limit": 300}
    argv = views.reinit_argv(setup, 5)
    assert shlex.split(views.shell(argv)) == argv
    assert argv[argv.index("--data") + 1] == "folder:/data/x; rm -rf ~" and "--random-init" in argv
    ns = build_parser().parse_args(argv[1:])  # the real CLI accepts it as is
    assert ns.random_init and ns.model == setup["backbone"] and ns.limit == 300 and ns.num_classes == 5
    snippet = views.python_snippet(setup, 5)
    assert "pretrained=False" in snippet and "arch='timm:resnet18'" in snippet and "limit=300" in snippet
    compile(snippet, "snippet", "exec")


def test_robust_scale_is_not_set_by_one_outlier_and_width_normalised_metrics_say_so():
    wide = pd.DataFrame({"dfi_si": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 50.0]}, index=[f"l{i}" for i in range(10)])
    minmax, robust = views.normalise_columns(wide)["dfi_si"], views.robust_columns(wide)["dfi_si"]
    assert minmax.iloc[:9].max() < 0.02  # min-max: the outlier paints every other layer the same
    assert robust.iloc[0] == 0.0 and robust.iloc[-1] == 1.0 and 0.4 < robust.iloc[5] < 0.7  # spread kept
    layers = pd.DataFrame({"name": ["dw", "pw"], "units": [32, 64], "shape": [[32, 1, 3, 3], [64, 32, 1, 1]]})
    w = pd.DataFrame({"stable_rank": [1.0, 8.0], "feature_erank": [16.0, 16.0], "grad_norm": [1.0, 4.0],
                      "fro_norm": [1.0, 8.0]}, index=["dw", "pw"])
    n = views.width_normalised(w, layers)
    assert n.at["dw", "stable_rank"] == 1.0 and n.at["pw", "stable_rank"] == 0.25  # depthwise: full rank, not worst
    assert n.at["dw", "feature_erank"] == 0.5 and n.at["pw", "feature_erank"] == 0.25
    assert views.width_normalised(w, layers, samples=32).at["pw", "feature_erank"] == 0.5  # rank <= probe images
    assert n.at["pw", "grad_norm"] == 0.5 and w.at["pw", "grad_norm"] == 4.0  # colours only; the data is untouched
    fig, _ = views.heatmap(w, {"dw": "s", "pw": "s"}, {}, worse={"stable_rank": "low", "feature_erank": "low",
                                                               "grad_norm": "low"}, colour_by=n)
    directed = fig.data[0].z
    assert directed[0][0] == 0.0 and directed[1][0] == 1.0  # the depthwise row is the best stable_rank here
    assert "per width" in fig.data[3].customdata[0][4]


def test_launch_plan_says_runs_at_once_and_the_time_when_known():
    assert views.launch_plan(6, 2, 100, 0.6) == ("6 runs, 2 at a time, ~3 min (from a finished run of this setup; "
                                                 "runs at once share the machine).")
    assert views.launch_plan(6, 1, 100, None).startswith("6 runs, one at a time (time unknown")
    assert views.launch_plan(1, 4, 10, 1.0).startswith("1 run, one at a time, ~1 min")


def test_export_files_render_on_request_and_read_back(tmp_path):
    import plasticity_core as pc

    bb = pc.load_backbone("timm:test_resnet", pretrained=False, num_classes=4)
    data = pc.load_dataset("synthetic:classes=4,n=64,size=32", image_size=32)
    d = pc.diagnose(bb, data.val, metrics=["dormant", "stable_rank"], max_batches=1)
    (tmp_path / "d.parquet").write_bytes(views.diagnosis_parquet(d))
    assert pc.Diagnosis.load(tmp_path / "d.parquet").wide().equals(d.wide())
    html = views.heatmap_html(d)
    assert "<html>" in html[:100] and "plotly" in html and "stable_rank" in html


def _table_app():
    import pandas as pd

    from dashboard import tables

    tables.show(pd.DataFrame({"fro_norm": [1.66e-11, 12.8], "dfi": [3.03e51, 272.0], "units": [576, 384]},
                             index=["blocks.5.0.conv_pw", "blocks.4.0.conv_pw"]), key="t", hide_index=True)


def test_number_tables_format_small_values_to_significant_digits_and_large_columns_scientific():
    """What Streamlit receives for a dead layer's 1.66e-11 norm (``%.4g``: 1.66e-11, not 0.00000000001) and a diverged
    layer's dfi (its column scientific); integer columns keep theirs."""
    import json

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_table_app).run()
    config = json.loads(at.dataframe[0].proto.columns)
    assert config["fro_norm"]["type_config"]["format"] == "%.4g"
    assert config["dfi"]["type_config"]["format"] == "%.4e"
    assert "units" not in config
