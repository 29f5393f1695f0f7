"""The dashboard's figure helpers: normalisation, stage grouping, heatmap cells and selection, curves."""
import numpy as np
import pandas as pd
import pytest

from dashboard import views


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
    return pd.DataFrame({"dormant": [0.1, 0.5, 0.0, 0.2], "dfi": [3.0, 1.0, 2.0, 8.0]},
                        index=["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"])


def test_heatmap_cells_hover_and_stage_bands():
    wide = _wide()
    stages = {"conv1": "conv1", "layer1.0.conv1": "layer1", "layer1.0.conv2": "layer1", "fc": "head"}
    fig, cells = views.heatmap(wide, stages, {"dormant": "def-d", "dfi": "def-f"}, selected=["fc"])
    heat, points = fig.data
    assert cells == [(l, m) for l in wide.index for m in wide.columns]
    np.testing.assert_allclose(heat.z, views.normalise_columns(wide).to_numpy())
    # hover of each point: layer, stage, metric, raw value, normalised value, definition
    k = cells.index(("fc", "dfi"))
    assert list(points.customdata[k]) == ["fc", "head", "dfi", "8", "1", "def-f"]
    assert points.x[k] == 1 and points.y[k] == 3
    assert [a.text for a in fig.layout.annotations] == ["conv1", "layer1", "head"]
    outlines = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(outlines) == 1 and outlines[0].y0 == 2.5 and outlines[0].y1 == 3.5


def test_layers_from_selection_maps_points_back_in_network_order():
    wide = _wide()
    _, cells = views.heatmap(wide, {}, {})
    order = list(wide.index)
    # a box over rows 1..3 of column 0, reported in any order; curve 0 (the heatmap) is ignored
    sel = {"points": [{"curve_number": 1, "point_index": cells.index(("fc", "dormant"))},
                      {"curve_number": 1, "point_index": cells.index(("layer1.0.conv1", "dfi"))},
                      {"curve_number": 1, "point_index": cells.index(("layer1.0.conv1", "dormant"))},
                      {"curve_number": 0, "point_index": 0}]}
    assert views.layers_from_selection(sel, cells, order) == ["layer1.0.conv1", "fc"]
    assert views.layers_from_selection({"points": []}, cells, order) == []
    assert views.layers_from_selection(None, cells, order) == []


def test_curves_mean_line_and_min_max_band_over_seeds():
    pts = pd.DataFrame({"arm": ["a"] * 4 + ["b"] * 2, "seed": [0, 0, 1, 1, 0, 0], "step": [10, 20, 10, 20, 10, 20],
                        "metric": "val_acc", "value": [0.2, 0.4, 0.4, 0.8, 0.5, 0.6]})
    fig = views.curves(pts, "val_acc", "acc")
    band, line_a, line_b = fig.data  # arm a has two seeds: band + line; arm b one seed: line only
    assert list(line_a.y) == pytest.approx([0.3, 0.6])
    assert list(band.y) == pytest.approx([0.4, 0.8, 0.4, 0.2])  # max forward, min backward
    assert list(line_b.y) == pytest.approx([0.5, 0.6]) and line_a.line.color != line_b.line.color
