"""``pc.track``: a plain training loop of the user's own, written into the run store as a run like ours."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import plasticity_core as pc
from plasticity_core.cli import main as cli_main
from plasticity_core.errors import UserError
from plasticity_core.train.events import run_progress


def _model() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4)


def _accuracy(model: nn.Module, data) -> tuple[float, float]:
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    model.eval()
    correct = n = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    model.train()
    return correct / n, loss / n


def _loop(run, model, opt, data, steps: int = 4) -> None:
    """The user's own loop: what pc.track adds to it is the run.log calls."""
    loader = torch.utils.data.DataLoader(data.train, batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    model.train()
    for step in range(1, steps + 1):
        x, y = next(it)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.log(step, loss=loss, lr=opt.param_groups[0]["lr"])
        if step % 2 == 0:
            acc, vl = _accuracy(model, data.val)
            run.log(step, val_acc=acc, val_loss=vl)


def test_track_plain_loop_baseline_and_reinit_compare(tmp_path, synthetic, capsys):
    store = pc.RunStore(tmp_path / "runs")
    for reinit in (None, pc.ReinitConfig(strategy="reset", layers=["layer4.*"], seed=0)):
        model = _model()
        with pc.track(store, "mine", model=model, reinit=reinit, data=synthetic.train, config={"lr": 1e-3, "note": "x"},
                      total_steps=4) as run:
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # built after the re-init: no stale state
            _loop(run, model, opt, synthetic)
    table = store.table("mine")
    assert sorted(table["arm"]) == ["baseline", "reset"] and set(table["status"]) == {"finished"}
    assert set(table["steps"]) == {4}
    fire = store.get("mine/reset-seed0")
    kinds = [e["type"] for e in fire.events()]
    assert kinds[:2] == ["start", "reinit"] and kinds[-1] == "finished"
    assert [e["step"] for e in fire.events("eval")] == [2, 4]
    assert fire.events("reinit")[0]["resolved_layers"] == ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.1"]
    assert fire.config.arms["reset"].layers == ["layer4.*"] and fire.config.finetune.steps == 4
    assert fire.events("start")[0]["params"] == {"lr": 1e-3, "note": "x"}
    compare = pc.compare_runs(store.runs("mine"))
    assert sorted(compare["arm"]) == ["baseline", "reset"] and set(compare["n_seeds"]) == {1}
    assert run_progress(fire.events(), fire.summary())["fraction"] == 1.0
    # the CLI lists and compares them like runs of our own loop
    assert cli_main(["runs", "--store", str(store.root)]) in (0, None)
    assert cli_main(["compare", "--store", str(store.root), "mine/baseline-seed0", "mine/reset-seed0"]) in (0, None)
    out = capsys.readouterr().out
    assert "reset-seed0" in out and "baseline" in out


def test_track_resets_the_state_of_an_optimizer_that_exists(tmp_path, synthetic):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = next(iter(torch.utils.data.DataLoader(synthetic.train, batch_size=16)))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # every parameter has Adam moments now
    touched, kept = model.layer4[0].downsample[1].weight, model.fc.weight
    assert opt.state[touched]["exp_avg"].abs().sum() > 0
    cfg = pc.ReinitConfig(strategy="reset", layers=["layer4.0.downsample.1"], seed=0)
    with pc.track(tmp_path, "opt", model=model, reinit=cfg, optimizer=opt, data=synthetic.train) as run:
        # right after the re-init, before any further step: the touched slices' state is gone, the rest is kept
        assert opt.state[touched]["exp_avg"].abs().sum() == 0 and opt.state[touched]["exp_avg_sq"].abs().sum() == 0
        assert opt.state[kept]["exp_avg"].abs().sum() > 0
        assert run.reinit_optimizers == 1
    assert run.run.events("reinit")[0]["optimizers_at_reinit"] == 1


def test_track_cbp_steps_after_each_optimizer_step(tmp_path, synthetic):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    cfg = pc.ReinitConfig(strategy="cbp", layers=["layer3.*"], params={"maturity": 1, "replacement_rate": 0.5})
    with pc.track(tmp_path, "cbp", model=model, reinit=cfg, optimizer=opt) as run:
        _loop(run, model, opt, synthetic, steps=4)
    assert run.steps == 4  # the step hook saw every optimizer step
    replaced = run.run.events("cbp")[0]["replaced"]
    assert sum(replaced.values()) > 0
    assert sum(e["replaced"] for e in run.run.events("step")) == sum(replaced.values())


def test_track_diagnosis_snapshots(tmp_path, synthetic):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pc.track(tmp_path, "diag", model=model, data=synthetic.val, diagnose_every=2) as run:
        _loop(run, model, opt, synthetic, steps=4)
    snaps = run.run.events("diagnosis")
    assert [e["step"] for e in snaps] == [2, 4]
    assert {r["metric"] for r in snaps[0]["rows"]} == {"dormant", "saturation"}
    import pandas as pd

    assert set(pd.read_parquet(run.path / "diagnosis.parquet")["step"]) == {2, 4}


def test_track_final_status_on_exception_and_ctrl_c(tmp_path):
    with pytest.raises(RuntimeError):
        with pc.track(tmp_path, "end", arm="a") as run:
            run.log(1, loss=1.0)
            raise RuntimeError("CUDA out of memory at step 1\nmore lines")
    s = run.run.summary()
    assert s["status"] == "failed" and s["reason"] == "RuntimeError: CUDA out of memory at step 1"
    assert (run.path / "error.txt").exists()
    with pytest.raises(KeyboardInterrupt):
        with pc.track(tmp_path, "end", arm="b") as run:
            run.log(3, loss=1.0)
            raise KeyboardInterrupt
    assert run.run.summary()["status"] == "stopped" and "after 3 steps" in run.run.summary()["reason"]
    with pc.track(tmp_path, "end", arm="c") as run:
        run.log(1, loss=1.0)
        run.run.request_stop()  # the dashboard's Stop button
        assert run.stop_requested
    assert run.run.summary()["status"] == "stopped"


def test_track_dead_process_reads_failed_within_the_heartbeat_timeout(tmp_path):
    code = textwrap.dedent(f"""
        import os, time, plasticity_core as pc
        run = pc.track({str(tmp_path)!r}, "dead", heartbeat_s=0.2, heartbeat_timeout_s=1.0).__enter__()
        run.log(5, loss=0.5)
        time.sleep(0.6)  # a beat or two with the step
        print("open", flush=True)
        os._exit(0)  # the process dies: no finish, no atexit
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "open" in out.stdout, out.stderr
    run = pc.RunStore(tmp_path).get("dead/baseline-seed0")
    assert run.raw_summary()["status"] == "running"
    time.sleep(1.5)
    s = run.summary()
    assert s["status"] == "failed" and "no heartbeat" in s["reason"] and "last step 5" in s["reason"]


def test_track_bad_input_is_one_line_before_anything_trains(tmp_path, synthetic):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # layers that match nothing in the user's model: refused, no folder, the model untouched
    with pytest.raises(UserError, match=r"match no layer of ResNet .*conv1\.0.*pass module="):
        pc.track(tmp_path, "bad", model=model, reinit=pc.ReinitConfig(strategy="reset", layers=["blocks.5.*"])).__enter__()
    assert not (tmp_path / "bad").exists()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # cbp without an optimizer to step after
    with pytest.raises(UserError, match="replaces units after every optimizer step.*pass optimizer="):
        pc.track(tmp_path, "bad", model=model, reinit=pc.ReinitConfig(strategy="cbp", layers=["layer3.*"])).__enter__()
    assert not (tmp_path / "bad").exists()
    # a store that cannot be written
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write there.*pass a folder you can write"):
        pc.track(tmp_path / "file" / "runs", "x")
    # a run name that exists
    with pc.track(tmp_path, "taken") as run:
        run.log(1, loss=1.0)
    with pytest.raises(UserError, match="exists already.*pass another name"):
        pc.track(tmp_path, "taken")
    # a name that would leave the store, a value that is not a number, a percentage for an accuracy
    with pytest.raises(UserError, match="not allowed"):
        pc.track(tmp_path, "../out")
    with pc.track(tmp_path, "vals") as run:
        with pytest.raises(UserError, match="not a number"):
            run.log(1, loss="high")
        with pytest.raises(UserError, match="not a fraction"):
            run.log(1, val_acc=87.5)
    for e in (UserError, ValueError):
        assert issubclass(pc.IntegrationError, e)
    assert json.loads((run.path / "summary.json").read_text())["status"] == "finished"


def test_track_finds_the_backbone_inside_a_wrapper(tmp_path, synthetic):
    class Wrapper(nn.Module):  # what a LightningModule or a Hugging Face model around a timm backbone looks like
        def __init__(self) -> None:
            super().__init__()
            self.model = _model()

        def forward(self, x):
            return self.model(x)

    w = Wrapper()
    with pc.track(tmp_path, "wrapped", model=w, reinit=pc.ReinitConfig(strategy="reset", layers=["layer4.0.conv1"]),
                  data=synthetic.train) as run:
        pass
    assert run.module is w.model and run.module_path == "model"
    assert run.run.events("reinit")[0]["resolved_layers"] == ["layer4.0.conv1"]


def test_a_tracked_run_is_not_resumed_by_plasticity(tmp_path):
    from plasticity_core.runs.interrupt import resume_problem

    with pytest.raises(KeyboardInterrupt):
        with pc.track(tmp_path, "mine") as run:
            run.log(1, loss=1.0)
            raise KeyboardInterrupt
    assert run.run.summary()["status"] == "stopped"
    assert "your own script (through the track integration)" in resume_problem(run.run)


def test_tracked_runs_show_on_the_dashboard_while_they_train_and_compare(tmp_path, monkeypatch, synthetic):
    from dashboard.testing import no_exception, tiny_app

    monkeypatch.setenv("PLASTICITY_RUNS", str(tmp_path))
    model = _model()
    with pc.track(tmp_path, "mine", model=model, total_steps=4) as run:
        _loop(run, model, torch.optim.SGD(model.parameters(), lr=0.01), synthetic, steps=2)
        at = tiny_app()  # while it trains: the page lists it running with its step and accuracy so far
        at.switch_page("app_pages/finetune.py").run()
        no_exception(at)
        assert at.selectbox(key="w_ft_experiment").value == "mine"
        progress = at.dataframe[0].value
        assert progress.iloc[0]["status"] == "running" and progress.iloc[0]["step"] == "2/4"
        _loop(run, model, torch.optim.SGD(model.parameters(), lr=0.01), synthetic, steps=4)
    model = _model()
    with pc.track(tmp_path, "mine", model=model, reinit=pc.ReinitConfig(strategy="reset", layers=["layer4.*"]),
                  data=synthetic.train, total_steps=4) as run:
        _loop(run, model, torch.optim.SGD(model.parameters(), lr=0.01), synthetic, steps=4)
    at.run()
    no_exception(at)
    compare = at.dataframe[-1].value
    assert sorted(compare["arm"]) == ["baseline", "reset"]
    assert {"curve_val_acc", "curve_loss"} <= {c.key for c in at.get("plotly_chart")}  # accuracy and loss curves


def test_other_processes_of_a_distributed_launch_reinit_but_do_not_write(tmp_path, monkeypatch, synthetic):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = _model()
    cfg = pc.ReinitConfig(strategy="reset", layers=["layer4.*"], seed=0)
    with pc.track(tmp_path, "ddp", model=model, reinit=cfg, data=synthetic.train) as run:
        run.log(1, loss=1.0, val_acc=0.5)
    assert run.report is not None and run.report.resolved_layers and not (tmp_path / "ddp").exists()
    with pytest.raises(UserError, match="distributed launch"):
        pc.track(tmp_path, "ddp", model=model, reinit=pc.ReinitConfig(strategy="cbp", layers=["layer3.*"]),
                 optimizer=torch.optim.SGD(model.parameters(), lr=0.1)).__enter__()


def test_the_dashboard_offers_no_resume_for_a_tracked_run(tmp_path, monkeypatch):
    from dashboard.testing import no_exception, tiny_app

    monkeypatch.setenv("PLASTICITY_RUNS", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with pc.track(tmp_path, "mine") as run:
            run.log(1, loss=1.0, val_acc=0.5)
            raise KeyboardInterrupt
    at = tiny_app()
    at.switch_page("app_pages/finetune.py").run()
    no_exception(at)
    assert "btn_resume" not in [b.key for b in at.button]


def test_track_diagnosis_keeps_a_frozen_batchnorm_frozen(tmp_path, synthetic):
    """A loop that diagnoses mid-run (pc.track) with a frozen BatchNorm in eval inside a model in train mode: after the
    snapshot the BatchNorm is still in eval and its statistics do not move on the next training step."""
    model = _model()
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    frozen.eval()
    with pc.track(tmp_path, "frozen", model=model, data=synthetic.val) as run:
        run.diagnose(1)
    assert model.training and not frozen.training
    stats = frozen.running_mean.clone()
    model(next(iter(torch.utils.data.DataLoader(synthetic.train, batch_size=8)))[0])
    assert torch.equal(frozen.running_mean, stats)
