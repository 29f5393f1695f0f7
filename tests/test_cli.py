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
