"""Launch checks: dotted overrides, and arms that would do nothing refused with their reason."""
from __future__ import annotations

import pytest

from plasticity_core.config import ConfigError, ExperimentConfig, FinetuneConfig, ReinitConfig
from plasticity_core.runs import LaunchError, RunStore, apply_overrides, noop_arms, run_experiment

DATA = "synthetic:classes=4,n=96,size=32"


def _exp(arms) -> ExperimentConfig:
    return ExperimentConfig(name="n", backbone="timm:test_resnet", pretrained=False, data=DATA, arms=arms,
                            finetune=FinetuneConfig(steps=4, batch_size=16, eval_every=2, image_size=32, device="cpu"))


def test_dotted_overrides_are_validated_like_the_file():
    cfg = apply_overrides(_exp({"baseline": None}), ["finetune.lr=0.02", "seeds=[0,1,2]", "launch.parallel=3",
                                                     "launch.slurm.cluster=local", "launch.executor=ray"])
    assert (cfg.finetune.lr, cfg.seeds, cfg.launch.parallel, cfg.launch.slurm, cfg.launch.executor) == (
        0.02, [0, 1, 2], 3, {"cluster": "local"}, "ray")
    assert ExperimentConfig.from_yaml(cfg.to_yaml()) == cfg  # the launch section round-trips
    with pytest.raises(ConfigError, match="unknown key 'finetune.lrr'.*'lr'"):
        apply_overrides(cfg, ["finetune.lrr=1"])
    with pytest.raises(ConfigError, match="LaunchConfig.parallel: must be >= 1"):
        apply_overrides(cfg, ["launch.parallel=0"])
    with pytest.raises(ConfigError, match="unknown executor 'rey'; did you mean 'ray'"):
        apply_overrides(cfg, ["launch.executor=rey"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(cfg, ["finetune.lr"])
    assert apply_overrides(cfg, ["name=__import__('os')"]).name == "__import__('os')"  # text, never evaluated


def test_arms_that_would_do_nothing_are_named_and_refused(tmp_path):
    arms = {"baseline": None, "fire": ReinitConfig(strategy="fire", layers=["layer4*"]),
            "nothing": ReinitConfig(strategy="fire", layers=["no_such_layer*"]),
            "late_cbp": ReinitConfig(strategy="cbp", layers=["layer4*"], params={"maturity": 4}),
            "cbp": ReinitConfig(strategy="cbp", layers=["layer4*"], params={"maturity": 1, "replacement_rate": 0.5})}
    noops = noop_arms(_exp(arms))
    assert set(noops) == {"nothing", "late_cbp"}
    assert noops["nothing"].startswith("fire on timm:test_resnet: ") and "no_such_layer" in noops["nothing"]
    assert "maturity 4 >= the run's 4 steps" in noops["late_cbp"]
    with pytest.raises(LaunchError, match="refusing to launch arms that would do nothing.*nothing: fire on timm:test_resnet"):
        run_experiment(_exp(arms), RunStore(tmp_path), tag="x")
    assert not (tmp_path / "n-x").exists()  # refused before any folder was claimed
    (run,) = run_experiment(_exp({"late_cbp": arms["late_cbp"]}), RunStore(tmp_path), tag="y", allow_noop=True)
    assert run.status == "finished"


def test_quick_noop_check_scores_one_batch_and_agrees_with_the_full_check():
    """The dashboard's Launch check: one forward per unit-scoring arm, the same verdicts as the full check."""
    from plasticity_core.setup import load_setup

    arms = {"baseline": None,
            "targeted": ReinitConfig(strategy="targeted", layers=["layer4*"], params={"criterion": "dormant"}),
            "redo_none": ReinitConfig(strategy="redo", layers=["layer4*"], params={"tau": 0.0}),
            "fire": ReinitConfig(strategy="fire", layers=["layer4*"])}
    exp = _exp(arms)
    bb, data = load_setup(exp)
    seen = []
    quick = noop_arms(exp, backbone=bb, data=data, quick=True, progress=lambda *a: seen.append(a))
    assert quick == noop_arms(exp, backbone=bb, data=data) and "targeted" not in quick and "fire" not in quick
    assert seen == [(1, 3), (2, 3), (3, 3)]
    forwards = []
    bb.model.register_forward_pre_hook(lambda *_: forwards.append(1))  # copied into every preview's deep copy
    noop_arms(_exp({"fire": arms["fire"]}), backbone=bb, data=data, quick=True)
    tracing = len(forwards)  # what a check costs without scoring units (the layer map's trace of a fresh copy)
    forwards.clear()
    one = _exp({"targeted": arms["targeted"]})
    noop_arms(one, backbone=bb, data=data, quick=True)
    assert len(forwards) == tracing + 1  # one forward on one batch
    forwards.clear()
    noop_arms(one, backbone=bb, data=data)
    assert len(forwards) > tracing + 1  # the full check scores every probe batch
