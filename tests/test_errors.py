"""Every bad input a user can give the CLI ends in one line naming the input and what to do, exit code 2, no traceback.

The table is swept through real processes: one driver process imports the CLI once and forks a child per case
(``main(argv)`` with its own stderr and exit status, an uncaught exception printed by the child as Python would),
so the sweep costs one interpreter start instead of thirty.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch

from plasticity_core.errors import UserError, for_entry, user_message

DRIVER = textwrap.dedent('''
    import json, os, sys, traceback
    import plasticity_core.cli as cli, plasticity_core.models, plasticity_core.data, plasticity_core.metrics  # warm
    cases, out = json.loads(open(sys.argv[1]).read()), {}
    for name, argv in cases.items():
        err_path = sys.argv[1] + "." + name + ".err"
        pid = os.fork()
        if pid == 0:
            fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            try:
                rc = cli.main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
            sys.stderr.flush()
            os._exit(rc)
        _, status = os.waitpid(pid, 0)
        out[name] = {"rc": os.waitstatus_to_exitcode(status), "err": open(err_path).read()}
    print(json.dumps(out))
''')


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width`` x ``height`` pixels (beyond PIL's decompression limit); no real data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def small_png(path: Path, value: int = 128) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (value, 255 - value, 40)).save(path)


def experiment_yaml(path: Path, **finetune) -> str:
    from plasticity_core.config import ExperimentConfig

    cfg = ExperimentConfig(name="bad", backbone="timm:test_resnet", pretrained=False, data="synthetic:classes=2,n=16,size=16")
    d = cfg.to_dict()
    d["finetune"].update({"steps": 2, "image_size": 16, **finetune})
    import yaml

    path.write_text(yaml.safe_dump(d))
    return str(path)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Build the bad inputs, run every case in its own process, return {case: {"rc", "err"}}."""
    import timm
    from safetensors.torch import save_file

    tmp = tmp_path_factory.mktemp("bad")
    sd = {k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=4).state_dict().items()}
    save_file(sd, str(tmp / "ok.safetensors"))
    raw = (tmp / "ok.safetensors").read_bytes()
    (tmp / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp / "empty.safetensors").write_bytes(b"")
    torch.save(sd, tmp / "ok.pt")
    raw = (tmp / "ok.pt").read_bytes()
    (tmp / "damaged.pt").write_bytes(raw[: len(raw) // 2])
    import argparse

    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, tmp / "objects.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp / "lightning.ckpt")
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=5).state_dict().items()},
              str(tmp / "head5.safetensors"))
    (tmp / "fire.yaml").write_text("strategy: redo\nlayers: ['layer4*']\n")
    png_header_only(tmp / "big" / "a" / "huge.png", 20000, 20000)
    small_png(tmp / "big" / "b" / "ok.png")
    for i in range(3):
        small_png(tmp / "oneclass" / "cats" / f"{i}.png", 40 * i)
    (tmp / "afile").write_text("a file, not a folder")
    out = str(tmp / "d.parquet")
    m = ["--model", "timm:test_resnet", "--random-init"]
    syn = ["--data", "synthetic:classes=3,n=30,size=16", "--image-size", "16"]
    arch = ["--arch", "timm:test_resnet"]
    cases = {
        "truncated_safetensors": ["layers", "--model", f"file:{tmp}/truncated.safetensors", *arch],
        "empty_safetensors": ["layers", "--model", f"file:{tmp}/empty.safetensors", *arch],
        "damaged_pt": ["layers", "--model", f"file:{tmp}/damaged.pt", *arch],
        "objects_pt": ["layers", "--model", f"file:{tmp}/objects.pt", *arch],
        "lightning_prefix": ["layers", "--model", f"file:{tmp}/lightning.ckpt", *arch],
        "missing_checkpoint": ["layers", "--model", f"file:{tmp}/nope.pt", *arch],
        "image_over_limit": ["diagnose", *m, "--data", f"folder:{tmp}/big", "--image-size", "16", "--out", out],
        "vit_wrong_size": ["diagnose", "--model", "timm:vit_tiny_patch16_224", "--random-init", *syn, "--out", out],
        "out_not_writable": ["diagnose", *m, *syn, "--out", f"{tmp}/afile/d.parquet"],
        "out_is_folder": ["diagnose", *m, *syn, "--out", str(tmp)],
        "finetune_missing_config": ["finetune", "--config", f"{tmp}/missing.yaml", "--store", f"{tmp}/runs"],
        "head_more_classes": ["reinit", "--config", f"{tmp}/fire.yaml", "--model", f"file:{tmp}/head5.safetensors",
                              *arch, *syn, "--out", f"{tmp}/r.safetensors"],
        "one_class_folder": ["diagnose", *m, "--data", f"folder:{tmp}/oneclass", "--image-size", "16", "--out", out],
        "empty_folder_path": ["diagnose", *m, "--data", "folder:", "--out", out],
        "unknown_model": ["layers", "--model", "timm:resnet181", "--random-init"],
        "unknown_metric": ["diagnose", *m, *syn, "--metrics", "dormnt", "--out", out],
    }
    for name, fields in {"lr_nan": {"lr": float("nan")}, "lr_inf": {"lr": float("inf")},
                         "momentum_negative": {"momentum": -0.5}, "weight_decay_negative": {"weight_decay": -1e-4},
                         "time_limit_zero": {"time_limit_s": 0}, "eval_batches_zero": {"eval_batches": 0},
                         "batch_size_1_batchnorm": {"batch_size": 1}}.items():
        cases[name] = ["finetune", "--config", experiment_yaml(tmp / f"{name}.yaml", **fields), "--store", f"{tmp}/runs"]
    (tmp / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    (tmp / "laughs.yaml").write_text("".join(
        ["name: laughs\nlaunch:\n  slurm:\n    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
        + [f"    {c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")]))
    (tmp / "dup.yaml").write_text("name: a\narms:\n  baseline: null\n  baseline: {strategy: fire}\n")
    (tmp / "emptyarm.yaml").write_text("name: a\narms:\n  x: {}\n")
    (tmp / "a_folder.yaml").mkdir()
    store = ["--store", f"{tmp}/runs"]
    cases.update({
        "config_binary": ["finetune", "--config", f"{tmp}/binary.yaml", *store],
        "config_is_folder": ["finetune", "--config", f"{tmp}/a_folder.yaml", *store],
        "config_billion_laughs": ["finetune", "--config", f"{tmp}/laughs.yaml", *store],
        "config_duplicate_key": ["finetune", "--config", f"{tmp}/dup.yaml", *store],
        "config_empty_arm": ["finetune", "--config", f"{tmp}/emptyarm.yaml", *store],
        "reinit_config_binary": ["reinit", "--config", f"{tmp}/binary.yaml", *m, *syn, "--out", f"{tmp}/r.safetensors"],
    })
    (tmp / "ckptdir").mkdir()
    os.symlink(tmp / "loop_b", tmp / "loop_a")
    os.symlink(tmp / "loop_a", tmp / "loop_b")
    os.mkfifo(tmp / "fifo.pt")
    (tmp / "redo.yaml").write_text("strategy: redo\nlayers: ['layer*']\n")
    cases.update({
        "checkpoint_name_300": ["layers", "--model", f"file:{tmp}/{'c' * 300}.pt", *arch],
        "checkpoint_is_folder": ["layers", "--model", f"file:{tmp}/ckptdir", *arch],
        "checkpoint_symlink_loop": ["layers", "--model", f"file:{tmp}/loop_a", *arch],
        "checkpoint_fifo": ["layers", "--model", f"file:{tmp}/fifo.pt", *arch],
        "redo_without_data": ["reinit", "--config", f"{tmp}/redo.yaml", *m, "--out", f"{tmp}/r.safetensors"],
    })
    for name, fields in {"image_size_huge": {"image_size": 100000}, "diagnose_metrics_text": {"diagnose_metrics": "dormant"},
                         "seed_over_2_32": {"seed": 2**64}}.items():
        cases[name] = ["finetune", "--config", experiment_yaml(tmp / f"{name}.yaml", **fields), *store]
    if not torch.cuda.is_available():
        cases["device_cuda_without_cuda"] = ["diagnose", *m, *syn, "--device", "cuda", "--out", out]
    from plasticity_core.models import host_reachable

    offline = not host_reachable("https://huggingface.co")
    if offline:
        cases["timm_pretrained_offline"] = ["layers", "--model", "timm:test_resnet"]
    (tmp / "cases.json").write_text(json.dumps(cases))
    # One OpenMP thread in the driver: a forked child cannot use a thread pool its parent started (libgomp hangs).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp / "cases.json")], capture_output=True, text=True,
                          timeout=600, cwd=tmp, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    results["_tmp"] = str(tmp)
    results["_offline"] = offline
    return results


EXPECT = {  # case -> substrings of the one-line message
    "truncated_safetensors": ["truncated.safetensors", "not a readable .safetensors file", "save it again"],
    "empty_safetensors": ["empty.safetensors", "not a readable .safetensors file"],
    "damaged_pt": ["damaged.pt", "damaged or not a PyTorch checkpoint"],
    "objects_pt": ["objects.pt", "Python objects besides tensors", "argparse.Namespace", "state_dict()"],
    "lightning_prefix": ["lightning.ckpt", "every key starts with 'model.'", "Lightning", "strip the prefix"],
    "missing_checkpoint": ["nope.pt", "does not exist"],
    "image_over_limit": ["without readable images", ": a;", "over PIL's decompression limit", "huge.png"],
    "vit_wrong_size": ["vit_tiny_patch16_224 was built for 224 px images, not 16 px", "--image-size 224"],
    "out_not_writable": ["--out", "afile/d.parquet", "cannot be written", "afile is a file, not a folder"],
    "out_is_folder": ["--out", "is a folder"],
    "finetune_missing_config": ["missing.yaml", "no such file"],
    "head_more_classes": ["has 5 classes but the data", "has 3", "--num-classes 3"],
    "one_class_folder": ["1 class (cats)", "at least 2 classes"],
    "empty_folder_path": ["folder: needs the path"],
    "unknown_model": ["unknown timm model 'resnet181'", "resnet18"],
    "unknown_metric": ["unknown metric 'dormnt'", "dormant"],
    "lr_nan": ["FinetuneConfig.lr", "finite"],
    "lr_inf": ["FinetuneConfig.lr", "finite"],
    "momentum_negative": ["FinetuneConfig.momentum", "[0, 1)"],
    "weight_decay_negative": ["FinetuneConfig.weight_decay", ">= 0"],
    "time_limit_zero": ["FinetuneConfig.time_limit_s", "> 0"],
    "eval_batches_zero": ["FinetuneConfig.eval_batches", ">= 1"],
    "batch_size_1_batchnorm": ["batch_size", "BatchNorm", "batch_size >= 2"],
    "config_binary": ["binary.yaml is not a text (UTF-8) file", "give the YAML config"],
    "config_is_folder": ["a_folder.yaml is a folder, not a config file"],
    "config_billion_laughs": ["the alias *a is not read", "write the values out"],
    "config_duplicate_key": ["line 4: the key 'baseline' appears twice", "keep one"],
    "config_empty_arm": ["arms['x']: empty", "x: null"],
    "reinit_config_binary": ["binary.yaml is not a text (UTF-8) file"],
    "image_size_huge": ["FinetuneConfig.image_size: at most 4096 px, got 100000"],
    "diagnose_metrics_text": ["diagnose_metrics", "write a list, e.g. [dormant]"],
    "seed_over_2_32": ["FinetuneConfig.seed: must be in 0..4294967295"],
    "checkpoint_name_300": ["checkpoint", "ccccc...", "(", "chars)", "File name too long", "255 bytes"],
    "checkpoint_is_folder": ["checkpoint", "ckptdir is a folder, not a file"],
    "checkpoint_symlink_loop": ["checkpoint", "loop_a", "symlink loop"],
    "checkpoint_fifo": ["checkpoint", "fifo.pt is a FIFO, not a regular file"],
    "redo_without_data": ["strategy 'redo' scores units on target data", "pass --data SPEC"],
    "device_cuda_without_cuda": ["--device cuda", "CUDA is not available", "--device cpu"],
    "timm_pretrained_offline": ["timm:test_resnet", "cannot be reached", "--random-init", "bundled:mobilenetv2_100"],
}


@pytest.mark.parametrize("case", sorted(EXPECT))
def test_bad_input_is_one_line_and_exit_2(sweep, case):
    if case not in sweep:
        pytest.skip("CUDA is available" if "cuda" in case else "huggingface.co is reachable")
    rc, err = sweep[case]["rc"], sweep[case]["err"]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert rc == 2, err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    for part in EXPECT[case]:
        assert part in errors[0], (part, errors[0])
    assert "holds more than tensors" not in err
    if case.startswith(("config_", "image_size_", "diagnose_metrics_", "seed_")):
        assert not list(Path(sweep["_tmp"], "runs").glob("*/*")), "a refused config made a run folder"


def test_out_is_checked_before_the_computation(sweep):
    assert "diagnose [" not in sweep["out_not_writable"]["err"]  # no progress bar: refused before any batch ran


def test_skipped_images_are_counted_and_the_rest_is_used(tmp_path, capsys):
    """One oversized and one undecodable file among good ones: skipped, counted, said; the dataset still loads."""
    from plasticity_core.cli import main

    for c in ("a", "b"):
        for i in range(4):
            small_png(tmp_path / "imgs" / c / f"{i}.png", 30 * i + (100 if c == "b" else 0))
    png_header_only(tmp_path / "imgs" / "a" / "huge.png", 20000, 20000)
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes((tmp_path / "imgs" / "b" / "0.png").read_bytes()[:60])
    out = tmp_path / "d.parquet"
    rc = main(["diagnose", "--model", "timm:test_resnet", "--random-init", "--data", f"folder:{tmp_path}/imgs",
               "--image-size", "16", "--metrics", "dormant", "--batches", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and out.is_file()
    assert "note: skipped 2 of 10 image files" in err and "1 unreadable (e.g. b/broken.png)" in err
    assert "1 over PIL's decompression limit" in err and "a/huge.png" in err


def test_dashboard_and_python_spellings_of_the_same_error():
    e = UserError("weights not cached: file:PATH with arch='timm:x', or load without pretrained weights (pretrained=False)")
    assert "pretrained=False" in user_message(e)
    assert "--random-init" in user_message(e, "cli") and "--arch 'timm:x'" in user_message(e, "cli")
    assert "untick 'Pretrained weights'" in user_message(e, "dashboard")
    assert for_entry("use image_size=224", "cli") == "use --image-size 224"
    assert for_entry("max_batches must be >= 1, got 0", "cli") == "--batches must be >= 1, got 0"
    assert for_entry("ReinitConfig.params.max_batches (strategy 'redo')", "cli") == \
        "ReinitConfig.params.max_batches (strategy 'redo')"  # a config field keeps its name


def test_bugs_are_not_dressed_up_as_user_errors():
    assert user_message(ZeroDivisionError("division by zero")) is None
    assert user_message(KeyError("weight")) is None  # a bare lookup failure is a bug, not an input problem
    try:
        import numpy as np

        np.zeros(3).reshape(2, 2)
    except ValueError as e:
        assert user_message(e) is None  # a ValueError from a dependency's guts
    assert user_message(FileNotFoundError(2, "No such file or directory", "/x/y.yaml")) == \
        "/x/y.yaml: no such file or folder; check the path"


def test_dashboard_spelling_names_the_real_checkbox():
    """The dashboard hint must name the checkbox the Setup page really shows."""
    from pathlib import Path

    from plasticity_core.errors import ENTRY_SPELLINGS

    label = ENTRY_SPELLINGS["dashboard"]["pretrained=False"].split("'")[1]
    setup = (Path(__file__).resolve().parents[1] / "dashboard" / "app_pages" / "setup.py").read_text()
    assert f'.checkbox("{label}"' in setup  # st.checkbox or a column's checkbox
