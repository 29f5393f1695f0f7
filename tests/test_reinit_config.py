"""ReinitConfig with the strategy registry: declared parameters, exact round trips, each invalid-config error."""
import pytest

import plasticity_core as pc
from plasticity_core.config import ConfigError
from plasticity_core.reinit import STRATEGIES, Param

EXAMPLES = {
    "fire": {"method": "svd", "steps": 20, "scale": "norm", "targets": "all"},
    "reset": {"init": "kaiming"},
    "shrink_perturb": {"form": "interpolate", "alpha": 0.5},
    "redo": {"tau": 0.1, "max_batches": 2},
    "targeted": {"criterion": "saturation", "fraction": 0.2, "outgoing": "zero"},
    "cbp": {"replacement_rate": 1e-5, "maturity": 100, "decay": 0.9},
}


def test_every_strategy_is_registered_with_documented_params():
    assert set(STRATEGIES.names()) == set(EXAMPLES)
    for name, info in STRATEGIES.items():
        assert info.definition and info.version >= 1 and callable(info.fn)
        assert all(isinstance(p, Param) and p.help for p in info.params)
        assert info.validate_params({}) == info.defaults()  # defaults are valid values


@pytest.mark.parametrize("strategy", sorted(EXAMPLES))
def test_yaml_and_json_round_trip_exactly(strategy):
    cfg = pc.ReinitConfig(strategy=strategy, layers=["layer3.*", "layer4.*"], exclude=["*downsample*"],
                          params=EXAMPLES[strategy], seed=7, resolved_layers=["layer3.0.conv1"], metric_versions={"dormant": 1})
    assert cfg.params == {**STRATEGIES.get(strategy).defaults(), **EXAMPLES[strategy]}
    assert pc.ReinitConfig.from_yaml(cfg.to_yaml()) == cfg
    assert pc.ReinitConfig.from_json(cfg.to_json()) == cfg
    assert pc.ReinitConfig.from_yaml(cfg.to_yaml()).to_yaml() == cfg.to_yaml()


def test_unknown_parameter_names_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['iters'\].*allowed: \['method', 'scale', 'steps', 'targets'\]"):
        pc.ReinitConfig(strategy="fire", params={"iters": 5})


@pytest.mark.parametrize("strategy, params, pattern", [
    ("fire", {"steps": "ten"}, r"params\.steps .*expected int in \[1, 100\].*Newton-Schulz.*got str 'ten'"),
    ("fire", {"steps": 0}, r"params\.steps .*got 0"),
    ("fire", {"steps": True}, r"params\.steps .*got bool"),
    ("fire", {"method": "qr"}, r"params\.method .*one of \['newton_schulz', 'svd'\].*got 'qr'"),
    ("redo", {"tau": -0.1}, r"params\.tau .*float in \[0.0, inf\].*dormancy.*got -0.1"),
    ("targeted", {"fraction": 0.0}, r"params\.fraction .*\(0.0, 1.0\].*got 0.0"),
    ("targeted", {"fraction": 1.5}, r"params\.fraction .*got 1.5"),
    ("cbp", {"decay": 1.0}, r"params\.decay .*\[0.0, 1.0\).*got 1.0"),
    ("shrink_perturb", {"lam": "big"}, r"params\.lam .*expected float"),
    ("shrink_perturb", {"sigma": float("nan")}, r"params\.sigma .*finite.*got nan"),
    ("redo", {"tau": float("inf")}, r"params\.tau .*finite.*got inf"),
])
def test_wrong_value_says_which_parameter_range_and_why(strategy, params, pattern):
    with pytest.raises(ConfigError, match=pattern):
        pc.ReinitConfig(strategy=strategy, params=params)


def test_int_is_accepted_for_float_params_and_stored_as_float():
    cfg = pc.ReinitConfig(strategy="shrink_perturb", params={"lam": 1, "sigma": 0})
    assert cfg.params["lam"] == 1.0 and isinstance(cfg.params["lam"], float)


def test_unknown_strategy_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean 'fire'"):
        pc.ReinitConfig(strategy="fir")


def test_unknown_schema_version_and_unknown_fields_are_refused():
    text = pc.ReinitConfig(strategy="reset").to_yaml().replace("schema_version: 1", "schema_version: 99")
    with pytest.raises(ConfigError, match="schema_version 99 is not supported"):
        pc.ReinitConfig.from_yaml(text)
    with pytest.raises(ConfigError, match="unknown field"):
        pc.ReinitConfig.from_dict({"strategy": "reset", "colour": "red"})


def test_validation_errors_from_a_loaded_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("strategy: redo\nparams:\n  tau: 2x\n")
    with pytest.raises(ConfigError, match=r"params\.tau .*expected float"):
        pc.ReinitConfig.load(path)
