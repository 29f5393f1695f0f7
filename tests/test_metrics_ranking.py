"""Top-k layers by a metric (in its worse direction) and the change between two diagnoses."""
import math

import pandas as pd
import pytest

from plasticity_core.metrics import ranking


def _wide():
    return pd.DataFrame({"dormant": [0.1, 0.5, math.nan, 0.3], "feature_erank": [4.0, 2.0, 9.0, 3.0],
                         "fro_norm": [1.0, 3.0, 2.0, 0.5]}, index=["a", "b", "c", "d"])


def test_top_layers_follow_the_metric_direction_and_skip_missing_values():
    assert ranking.top_layers(_wide(), "dormant", 2)["layer"].tolist() == ["b", "d"]  # higher is worse
    assert ranking.top_layers(_wide(), "feature_erank", 2)["layer"].tolist() == ["b", "d"]  # lower is worse
    assert ranking.top_layers(_wide(), "fro_norm", 1)["layer"].tolist() == ["b"]  # no direction: highest first
    top = ranking.top_layers(_wide(), "dormant", 10)
    assert top["rank"].tolist() == [1, 2, 3] and "c" not in top["layer"].tolist()
    with pytest.raises(KeyError, match="no metric 'dead'"):
        ranking.top_layers(_wide(), "dead")


def test_diagnosis_change_is_after_minus_before_on_shared_layers():
    before = _wide()
    after = before.drop(index="a").assign(dormant=[0.0, 0.2, 0.3])
    change = ranking.diagnosis_change(before, after, "dormant")
    assert change["layer"].tolist() == ["b", "c", "d"]
    assert change["change"].iloc[0] == pytest.approx(-0.5) and math.isnan(change["change"].iloc[1])
