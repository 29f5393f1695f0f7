import re

import pytest

from plasticity_core.config import SCHEMA_VERSION, ConfigError, ExperimentConfig, FinetuneConfig, ReinitConfig


def test_finetune_config_round_trips_exactly():
    cfg = FinetuneConfig(steps=37, optimizer="adamw", lr=3e-4, grad_clip=0.5, diagnose_metrics=["dormant"], epochs=None)
    assert FinetuneConfig.from_yaml(cfg.to_yaml()) == cfg
    assert FinetuneConfig.from_json(cfg.to_json()) == cfg


def test_experiment_config_round_trips_with_arms(tmp_path):
    exp = ExperimentConfig(
        name="t", backbone="timm:test_resnet", pretrained=False, data="synthetic:classes=4,n=64,size=32",
        finetune=FinetuneConfig(steps=5, image_size=32),
        arms={"baseline": None, "fire": ReinitConfig(strategy="fire", layers=["layer*"])}, seeds=[0, 1],
        train_per_class=5)
    again = ExperimentConfig.from_yaml(exp.to_yaml())
    assert again == exp and again.arms["baseline"] is None and isinstance(again.arms["fire"], ReinitConfig)
    exp.save(tmp_path / "e.json")
    assert ExperimentConfig.load(tmp_path / "e.json") == exp


@pytest.mark.parametrize("bad, match", [
    (dict(optimizer="adam"), "optimizer"),
    (dict(steps=0), "steps"),
    (dict(lr="fast"), "lr"),
    (dict(device="tpu"), "device"),
    (dict(augment="yes"), "augment"),
    (dict(amp=1), "amp"),
])
def test_invalid_finetune_fields_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig(**bad)


def test_unknown_fields_and_versions_are_refused():
    with pytest.raises(ConfigError, match="unknown field.*stepz"):
        FinetuneConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="schema_version 99"):
        FinetuneConfig.from_dict({"schema_version": 99})
    with pytest.raises(ConfigError, match="not valid YAML"):
        FinetuneConfig.from_yaml("steps: [1,")
    with pytest.raises(ConfigError, match="seeds"):
        ExperimentConfig(seeds=[])
    with pytest.raises(ConfigError, match="arms"):
        ExperimentConfig(arms={"x": "fire"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="train_per_class"):
        ExperimentConfig(train_per_class=0)
    assert FinetuneConfig().schema_version == SCHEMA_VERSION


def test_yaml_is_never_evaluated():
    text = "steps: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ConfigError):
        FinetuneConfig.from_yaml(text)


@pytest.mark.parametrize("field,value,needle", [
    ("lr", float("nan"), "finite"), ("lr", float("inf"), "finite"), ("lr", 0.0, "> 0"),
    ("momentum", -0.1, "[0, 1)"), ("momentum", 1.0, "[0, 1)"), ("weight_decay", -1e-4, ">= 0"),
    ("weight_decay", float("nan"), "finite"), ("time_limit_s", 0, "> 0"), ("time_limit_s", -5.0, "> 0"),
    ("eval_batches", 0, ">= 1"), ("grad_clip", 0.0, "> 0"), ("head_lr_scale", -1.0, ">= 0"),
])
def test_finetune_config_refuses_values_that_cannot_train(field, value, needle):
    from plasticity_core.config import ConfigError, FinetuneConfig

    with pytest.raises(ConfigError, match=rf"FinetuneConfig\.{field}: .*{re.escape(needle)}"):
        FinetuneConfig(**{field: value})
    with pytest.raises(ConfigError, match=rf"FinetuneConfig\.{field}"):  # the same from a file a user wrote
        FinetuneConfig.from_yaml(f"{field}: {value}".replace("nan", ".nan").replace("inf", ".inf"))


def test_batch_size_one_is_refused_only_with_batchnorm(tiny_resnet, tiny_vit):
    from plasticity_core.config import ConfigError
    from plasticity_core.finetune import check_batch_size

    with pytest.raises(ConfigError, match="batch_size: 1 cannot train a model with BatchNorm"):
        check_batch_size(tiny_resnet, 1)
    check_batch_size(tiny_resnet, 2)
    check_batch_size(tiny_vit, 1)  # LayerNorm trains on one image
