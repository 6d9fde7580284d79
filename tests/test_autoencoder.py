"""The bottleneck autoencoder: its modules (shapes, output activation, the denoising noise,
freezing and insertion), both training phases as runs (phase 2 killed and resumed exactly)
and the fair comparison with the SHG trained as long from the same weights."""

import json
import signal
from pathlib import Path

import pytest
import torch

from helpers import STARTED_OVER, assert_resumed, fault, metrics, run_cli, same, train_here, \
    weights
from shg.models import AEPhase1, BottleneckAE, SHGWithAE, StackedHourglass, \
    add_proportional_noise
from shg.studies import ae_compare
from shg.weights import load_weights

AE = ["data.num_workers=0", "eval.max_samples=8", "eval.batch_size=8",
      "train.batch_size=2", "train.log_every=1", "eval.every_steps=2",
      "checkpoint.every_steps=2", "train.deterministic=true",
      "ae.hidden=8", "ae.channels=4"]


def test_shapes_and_relu_output():
    ae = BottleneckAE(features=16, hidden=8, channels=4)
    x = torch.randn(3, 16, 4, 4)
    assert ae.encode(x).shape == (3, 4, 2, 2)
    y = ae(x)
    assert y.shape == x.shape and (y >= 0).all()
    flat = BottleneckAE(features=16, hidden=8, channels=4, downsample=False)
    assert flat.encode(x).shape == (3, 4, 4, 4) and flat(x).shape == x.shape


def test_output_activation_is_configurable():
    x = torch.randn(64, 16, 4, 4) * 3
    outs = {name: BottleneckAE(16, 8, 4, output=name)(x) for name in ("relu", "sigmoid",
                                                                        "linear")}
    assert (outs["relu"] >= 0).all() and (outs["relu"] == 0).any()
    assert ((outs["sigmoid"] > 0) & (outs["sigmoid"] < 1)).all()
    assert (outs["linear"] < 0).any()
    assert BottleneckAE(16, 8, 4, output="sigmoid").config()["output"] == "sigmoid"
    with pytest.raises(ValueError, match="output must be one of"):
        BottleneckAE(16, 8, 4, output="tanh")


def test_noise_has_the_stated_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.full((400_000,), 2.0)
    noisy = add_proportional_noise(x, 0.1, g)
    assert (noisy - x).mean().abs() < 0.002
    assert (noisy - x).std().item() == pytest.approx(0.2, rel=0.01)  # 0.1 * |x|
    assert torch.equal(add_proportional_noise(torch.zeros(10), 0.1, g), torch.zeros(10))
    x = torch.tensor([1.0, 10.0]).repeat(200_000)
    d = (add_proportional_noise(x, 0.3, g) - x).view(-1, 2)
    assert d.std(0).tolist() == pytest.approx([0.3, 3.0], rel=0.02)


def test_phase_modules_freeze_and_insert():
    shg = StackedHourglass(stacks=2, features=16, joints=5, zero_heads=False)
    ae = BottleneckAE(16, 8, 4)
    p1 = AEPhase1(shg, ae, stack=-1, noise=0.1).train()
    assert not shg.training and all(not p.requires_grad for p in shg.parameters())
    recon, clean = p1(torch.randn(2, 3, 256, 256))
    assert recon.shape == clean.shape == (2, 16, 4, 4)
    assert clean.grad_fn is None and recon.requires_grad
    shg2 = StackedHourglass(stacks=2, features=16, joints=5, zero_heads=False).eval()
    x = torch.randn(1, 3, 256, 256)
    plain = shg2(x)
    with_ae = SHGWithAE(shg2, BottleneckAE(16, 8, 4), stack=1, freeze_ae=True).eval()
    out = with_ae(x)
    assert out.shape == plain.shape
    assert torch.allclose(out[:, 0], plain[:, 0])       # stack 0 untouched
    assert not torch.allclose(out[:, 1], plain[:, 1])   # stack 1 went through the AE
    assert shg2.bottleneck_hook is None                 # hook removed after forward
    assert all(not p.requires_grad for p in with_ae.ae.parameters())


@pytest.fixture(scope="module")
def shg_run(small_shards, tmp_path_factory):
    """A 2-stack SHG trained 4 steps on the 128 px shards: what the AE phases start from."""
    run = tmp_path_factory.mktemp("ae") / "shg"
    assert train_here(small_shards, run, "train.max_steps=4", "eval.every_steps=2",
                      "checkpoint.every_steps=2") == 0
    return run


@pytest.fixture(scope="module")
def phase1_run(shg_run):
    return ae_compare.phase1(str(shg_run), ["train.max_steps=12", "optim.lr=0.003", *AE])


def test_phase1_loss_falls_and_reports_reconstruction(phase1_run, shg_run):
    assert phase1_run == Path(f"{shg_run}-ae")
    rows = metrics(phase1_run)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    vals = [r for r in rows if "val_recon_mse" in r]
    # the noisy input's relative error is the noise's own: E[(0.1 x e)^2] / E[x^2] = 0.01
    assert vals and all(r["val_noisy_rel"] == pytest.approx(0.01, rel=0.2) for r in vals)
    assert vals[-1]["val_recon_rel"] < vals[0]["val_recon_rel"]
    assert vals[-1]["val_recon_mse"] < vals[0]["val_recon_mse"]
    assert 'task = "ae"' in (phase1_run / "config.toml").read_text()
    best, meta = load_weights(phase1_run / "best")
    assert any(k.startswith("ae.") for k in best)
    # the SHG inside stayed the trained one (phase 1 freezes it)
    shg_best = load_weights(shg_run / "best")[0]
    assert all(torch.equal(best[f"shg.{k}"], v) for k, v in shg_best.items())
    assert meta["model"]["task"] == "ae"


@pytest.mark.slow
def test_phase2_loads_both_and_resumes_exactly(shg_run, phase1_run, tmp_path, capsys):
    ae_best = {k[3:]: v for k, v in load_weights(phase1_run / "best")[0].items()
               if k.startswith("ae.")}
    base = [*AE, "train.max_steps=4", "ae.freeze_ae=true"]
    ref = tmp_path / "ref"
    ae_compare.phase2(str(shg_run), str(phase1_run), [f"run_dir={ref}", *base])
    final = weights(ref, 4)
    assert all(torch.equal(final[f"ae.{k}"], v) for k, v in ae_best.items())  # frozen AE kept
    shg_before = load_weights(shg_run / "best")[0]
    assert any(not torch.equal(final[f"shg.{k}"], v) for k, v in shg_before.items()
               if v.dtype.is_floating_point)
    killed = tmp_path / "killed"
    proc = run_cli("ae", "finetune", "--run", str(shg_run), "--ae", str(phase1_run),
                   f"run_dir={killed}", *base, env={"SHG_FAULT": "step:3"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    capsys.readouterr()
    with fault(STARTED_OVER):
        ae_compare.phase2(str(shg_run), str(phase1_run), [f"run_dir={killed}", *base])
    assert_resumed(killed, 2, capsys.readouterr().out)
    assert same(weights(killed, 4), final)
    # the fine-tuned model evaluates like any other
    from shg.cli import main as shg

    assert shg(["eval", "--run", str(ref), "--shards", str(json_shards(ref)), "--split",
                "val2017", "--out", str(tmp_path / "ev"), "--max-samples", "8",
                "--no-flip"]) == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["samples"] == 8


def json_shards(run):
    import tomllib

    return tomllib.loads((run / "config.toml").read_text())["data"]["shards"]


def test_compare_starts_both_from_the_same_weights_and_writes_table_and_curves(
        shg_run, phase1_run, tmp_path):
    """`shg ae compare`: phase 2 and the baseline (the plain SHG trained on) both start from the
    SHG run's best/ weights. With a learning rate of 1e-30 no parameter can move by more than
    ~1e-28 in 2 steps (RMSProp steps are at most ~10 x lr), so both runs' SHG parameters must
    still be the trained SHG's to 1e-20, where a fresh initialisation differs by ~1e-2."""
    from shg.cli import main as shg

    out = tmp_path / "cmp"
    assert shg(["ae", "compare", "--run", str(shg_run), "--ae", str(phase1_run),
                "--out", str(out), *AE, "train.max_steps=2", "optim.lr=1e-30"]) == 0
    table = json.loads((out / "compare.json").read_text())
    assert len(table) == 2 and {row["steps"] for row in table.values()} == {2}
    assert all("pck_constant@0.5" in row["final"] for row in table.values())
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "difference" in (out / "compare.md").read_text()
    trained = {k: v for k, v in load_weights(shg_run / "best")[0].items()}
    names = {n for n, _ in StackedHourglass(2, 16, 17).named_parameters()}
    baseline = load_weights(Path(f"{shg_run}-continue") / "checkpoints" / "step-00000002")[0]
    finetuned = load_weights(Path(f"{shg_run}-ae-finetune") / "checkpoints" /
                             "step-00000002")[0]
    for name in names:
        assert torch.allclose(baseline[name], trained[name], rtol=0, atol=1e-20), name
        assert torch.allclose(finetuned[f"shg.{name}"], trained[name], rtol=0, atol=1e-20), name
    rows = table["baseline (continue SHG)"]["curve"]
    assert [r["step"] for r in rows] == [2]
