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


LAUGHS = "".join(["name: laughs\nlaunch:\n  slurm:\n    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"] +
                 [f"    {c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")])


def test_billion_laughs_is_refused_before_any_expansion():
    """A few hundred bytes of nested aliases would expand to 9^9 leaves; the loader refuses the first alias."""
    import resource

    assert len(LAUGHS) < 1000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match=r"alias \*a is not read"):
        ExperimentConfig.from_yaml(LAUGHS)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing was expanded


def test_self_similar_python_structures_and_deep_documents_are_bounded():
    a: list = ["lol"] * 9
    for _ in range(8):
        a = [a] * 9  # 9^9 leaves by shared references, as the YAML above would build
    with pytest.raises(ConfigError, match="LaunchConfig.slurm: nested deeper than 8"):
        ExperimentConfig(launch=__import__("plasticity_core.config", fromlist=["LaunchConfig"]).LaunchConfig(slurm={"x": a}))
    wide = {f"k{i}": list(range(10)) for i in range(2000)}
    with pytest.raises(ConfigError, match="more than 10000 values"):
        ReinitConfig(metric_versions={"x": 1}, skipped_layers={}, params={}).__class__(
            strategy="fire", metric_versions=wide)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="nested deeper"):
        ExperimentConfig.from_json("[" * 50_000 + "]" * 50_000)
    with pytest.raises(ConfigError, match="nested deeper"):
        ExperimentConfig.from_yaml("launch:\n  slurm: " + "[" * 30 + "]" * 30)
    with pytest.raises(ConfigError, match="metric_versions.*finite|finite"):
        ReinitConfig(metric_versions={"dormant": float("nan")})  # type: ignore[dict-item]


def test_duplicate_keys_are_refused_with_both_lines():
    text = "name: t\narms:\n  baseline: null\n  fire: {strategy: fire}\n  baseline: {strategy: redo}\n"
    with pytest.raises(ConfigError, match=r"line 5: the key 'baseline' appears twice in one mapping \(first on line 3\)"):
        ExperimentConfig.from_yaml(text)


def test_exported_yaml_has_no_anchors_and_reads_back():
    shared = ["layer1*"]
    exp = ExperimentConfig(arms={"a": ReinitConfig(layers=shared), "b": ReinitConfig(layers=shared)})
    text = exp.to_yaml()
    assert "&id" not in text and "*id" not in text
    assert ExperimentConfig.from_yaml(text) == exp


@pytest.mark.parametrize("text, match", [
    ("launch:\n  heartbeat_timeout_s: .nan\n", "LaunchConfig.heartbeat_timeout_s: must be a finite number"),
    ("launch:\n  cpus_per_run: .inf\n", "LaunchConfig.cpus_per_run: must be a finite number"),
    ("launch:\n  heartbeat_s: .nan\n", "LaunchConfig.heartbeat_s: must be a finite number"),
    ("finetune:\n  data_memory_mb: .inf\n", "FinetuneConfig.data_memory_mb: must be a finite number"),
    ("val_fraction: .nan\n", "val_fraction"),
    ("finetune:\n  diagnose_metrics: dormant\n", r"got the text 'dormant'; write a list, e.g. \[dormant\]"),
    ("finetune:\n  diagnose_metrics: 3\n", "diagnose_metrics: expected list/tuple, got int 3"),
    ("finetune:\n  diagnose_metrics: [3]\n", r"diagnose_metrics\[\]: expected str"),
    ("finetune:\n  image_size: 100000\n", "FinetuneConfig.image_size: at most 4096 px, got 100000"),
    ("finetune:\n  image_size: 2048\n  batch_size: 512\n", "24 GiB of input alone"),
    ("data_limit: -5\n", "data_limit: must be >= 1"),
    ("data_limit: 0\n", "data_limit: must be >= 1"),
    ("backbone: ''\n", "backbone: empty"),
    ("data: ' '\n", "data: empty"),
    ("seeds: [18446744073709551616]\n", r"seeds\[\]: must be in 0..4294967295"),
    ("seeds: [-1]\n", r"seeds\[\]: must be in 0..4294967295"),
    ("finetune:\n  seed: 4294967296\n", "FinetuneConfig.seed: must be in 0..4294967295"),
    ("arms:\n  x: {}\n", r"arms\['x'\]: empty; write `x: null`"),
    ("launch:\n  sinks: [3]\n", r"sinks\[\]: expected str"),
    ("launch:\n  slurm: {1: a}\n", "keys must be text"),
])
def test_configs_are_checked_to_the_value(text, match):
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig.from_yaml(text)


def test_long_names_are_cut_in_messages():
    with pytest.raises(ConfigError) as e:
        ExperimentConfig(name="x" * 5000)
    assert "must be 1..120 characters, got 5000" in str(e.value) and len(str(e.value)) < 200
    with pytest.raises(ConfigError) as e:
        FinetuneConfig(optimizer=7, steps="y" * 5000)  # type: ignore[arg-type]
    assert "5002 chars" in str(e.value) and len(str(e.value)) < 200


def test_unknown_diagnose_metric_is_refused_before_any_folder(tmp_path):
    from plasticity_core.runs import run_experiment

    cfg = ExperimentConfig(finetune=FinetuneConfig(diagnose_metrics=["dormnt"]))
    with pytest.raises(ConfigError, match="diagnose_metrics: unknown metric 'dormnt'; did you mean 'dormant'"):
        run_experiment(cfg, tmp_path / "store")
    assert not any((tmp_path / "store").rglob("*.json"))


def test_config_files_that_are_not_yaml_are_named(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"bin.yaml is not a text \(UTF-8\) file"):
        ExperimentConfig.load(tmp_path / "bin.yaml")
    (tmp_path / "nul.yaml").write_bytes(b"name: a\x00b\n")
    with pytest.raises(ConfigError, match="NUL bytes"):
        ExperimentConfig.load(tmp_path / "nul.yaml")
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        ExperimentConfig.load(tmp_path)
    import os

    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        ExperimentConfig.load(tmp_path / "fifo.yaml")  # would block for ever on read
