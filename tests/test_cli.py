import pandas as pd

from plasticity_core.cli import main


def test_layers_and_assets(capsys):
    assert main(["layers", "--model", "timm:test_resnet", "--random-init"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "fc" in out
    assert main(["assets", "list"]) == 0
    assert "mobilenet_v2" in capsys.readouterr().out


def test_diagnose_writes_a_parquet_that_loads(tmp_path, capsys):
    from plasticity_core.metrics import Diagnosis

    out = tmp_path / "d.parquet"
    rc = main(["diagnose", "--model", "timm:test_resnet", "--random-init", "--data", "synthetic:classes=4,n=64,size=32",
               "--image-size", "32", "--batches", "2", "--metrics", "dormant", "dfi", "--out", str(out)])
    assert rc == 0 and out.is_file()
    d = Diagnosis.load(out)
    assert set(d.table["metric"]) == {"dormant", "dfi"}
    assert "layer1.0.conv1" in set(d.table["layer"])
    assert "diagnose [" in capsys.readouterr().err


def test_user_errors_are_one_clear_line(capsys):
    assert main(["layers", "--model", "timm:resnet181", "--random-init"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown timm model 'resnet181'") and "resnet18" in err and "Traceback" not in err


def test_finetune_runs_and_compare_from_the_shell(tmp_path, capsys):
    from plasticity_core.config import ExperimentConfig, FinetuneConfig, ReinitConfig

    exp = ExperimentConfig(name="cli", backbone="timm:test_resnet", pretrained=False,
                           data="synthetic:classes=4,n=96,size=32", finetune=FinetuneConfig(steps=4, eval_every=2, image_size=32, batch_size=16),
                           arms={"baseline": None, "fire": ReinitConfig(strategy="fire", layers=["layer4*"])}, seeds=[0])
    exp.save(tmp_path / "exp.yaml")
    store = str(tmp_path / "runs")
    assert main(["finetune", "--config", str(tmp_path / "exp.yaml"), "--store", store]) == 0
    captured = capsys.readouterr()
    assert "finished at step 4" in captured.err and "fire" in captured.out
    assert main(["runs", "--store", store]) == 0
    listing = capsys.readouterr().out
    assert "baseline-seed0" in listing and "finished" in listing
    assert main(["compare", "--store", store, "baseline-seed0", "fire-seed0"]) == 0
    table = capsys.readouterr().out
    assert "baseline" in table and "fire" in table


def test_diagnose_names_the_layers_whose_sigma_1_took_the_exact_svd(tmp_path, capsys, monkeypatch):
    """A layer whose Lanczos did not converge gets the exact value, and the CLI says which (no silent slow path)."""
    import plasticity_core.metrics.weights as weights

    monkeypatch.setattr(weights, "GKL_MAX_STEPS", 2)  # every tap of more than 32 columns runs out of steps
    out = tmp_path / "d.parquet"
    rc = main(["diagnose", "--model", "timm:test_resnet", "--random-init", "--data", "synthetic:classes=4,n=64,size=32",
               "--image-size", "32", "--batches", "1", "--metrics", "spectral_norm", "--out", str(out)])
    err = capsys.readouterr().err
    from plasticity_core.metrics import Diagnosis

    slow = Diagnosis.load(out).meta["weights_slow_path"]["layers"]
    assert rc == 0 and slow
    line = next(l for l in err.splitlines() if "came from an exact SVD" in l)
    assert f"of {len(slow)} layer(s)" in line and all(name in line for name in slow[:8])


def test_the_printed_table_keeps_tiny_and_huge_values():
    """The terminal table shows 6 significant digits: a 1e-11 weight norm of a dead layer is not printed as 0
    (``round(4)`` printed it as 0.000000e+00), nor a 3e51 dfi rounded away."""
    from plasticity_core.cli import _table

    text = _table(pd.DataFrame({"fro_norm": [1.661123e-11, 12.8111], "dfi": [3.030945e51, 271.9969]},
                               index=["blocks.5.0.conv_pw", "blocks.4.0.conv_pw"]))
    assert "1.66112e-11" in text and "3.03095e+51" in text and "12.8111" in text and "271.997" in text
