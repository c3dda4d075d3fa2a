"""train.py end to end on a tiny fixture data set: files and metadata, reload, schedules, resume, distributed
path, bad inputs. resnet18, 32-64 px, 1-2 epochs: the whole module stays well under two minutes on 2 cores."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import utils  # noqa: F401
from fastai.learner import Learner
from fastai.callback.core import Callback, CancelFitException
from torchvision.models import resnet18

import train
import utils.training as training
from utils.data import find_dataset, make_dls
from utils.errors import PSSRError
from utils.model import build_model, load_model, make_meta, save_model
from utils.training import lr_arg, read_schedule, sr_metrics, unet_splitter

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_train import make_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = "s_1_tiny_new_crap_AG_SP"
# fp32 here: on a tiny run the bf16 kernels' warm-up costs more than they save; the fixture model uses the
# CPU fast path so that it is exercised too. Stride 16: a 32-px crop would collapse a full ResNet to 1x1.
FAST = dict(arch="resnet18", bs=4, size=32, tile_sz=64, lr=1e-3, attn=False, fp32=True, encoder_stride=16)


@pytest.fixture(scope="module")
def data(module_dir):
    root = module_dir("datasets")
    make_dataset(root, NAME, tile=64, n_train=8, n_valid=4)
    make_dataset(root, "t_5_tiny", tile=64, n_train=8, n_valid=4, n_frames=5, lr_type="t")
    return root


@pytest.fixture(scope="module")
def trained(data, module_dir):
    """One 2-epoch run (CPU fast path, encoder from an ImageNet-style weights file) shared by several tests."""
    d = module_dir("trained")
    torch.save(resnet18().state_dict(), d / "r18.pth")
    with mock.patch.object(training, "native_bf16", return_value=True):  # bf16 on any CPU (emulated: slower)
        run(data, d / "models", cycles=2, fp32=False, pretrain=True, weights=str(d / "r18.pth"))
    return d / "models"


def run(data, model_dir, **kw):
    opts = {**FAST, "datasetname": NAME, "data_path": str(data), "model_dir": str(model_dir), "save_name": "x",
            "cycles": 1, **kw}
    train.main(**opts)


def run_interrupted(monkeypatch, epoch: int, data, model_dir, **kw) -> None:
    """`run`, killed (KeyboardInterrupt) once epoch `epoch` is checkpointed."""
    orig = training.EpochCheckpoint.after_epoch

    def killed(self):
        orig(self)
        if self.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.EpochCheckpoint, "after_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run(data, model_dir, **kw)
    monkeypatch.setattr(training.EpochCheckpoint, "after_epoch", orig)


def snapshot(d: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in d.iterdir()} if d.exists() else {}


def test_train_saves_best_and_final_models(trained):
    """Contract files and metadata; the final model (= best epoch) reloads with identical outputs, also
    through the fastai export."""
    names = {p.name for p in trained.iterdir()}
    for n in ("s_1_x_e2", "s_1_x_e2_best_32"):
        assert {f"{n}.pth", f"{n}.json", f"{n}.pkl"} <= names
    assert "s_1_x_e2.ckpt" not in names  # a finished run leaves no checkpoint
    final, meta = load_model("s_1_x_e2", trained)
    best, best_meta = load_model("s_1_x_e2_best_32", trained)
    assert meta["scale"] == 4 and meta["n_frames"] == 1 and meta["size"] == 32 and meta["tile_sz"] == 64
    assert meta["crap_func"] == "new_crap_AG_SP" and meta["datasetname"] == NAME and meta["epochs"] == 2
    assert meta["pretrained"] and meta["imagenet_norm"] and "bf16" in meta["precision"]
    # the final model is the best epoch, its loss re-measured in fp32 (the epoch's was under bf16 autocast)
    assert np.isfinite(best_meta["best_valid_loss"])
    assert meta["best_valid_loss"] == pytest.approx(best_meta["best_valid_loss"], rel=1e-2)
    assert meta["beats_bilinear"] == (meta["best_valid_loss"] < meta["bilinear_valid_loss"])
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        y = final(x)
        assert torch.equal(y, best(x))
        from fastai.learner import load_learner
        exported = load_learner(trained / "s_1_x_e2.pkl").model.eval().float()
        assert torch.allclose(exported(x), y, atol=1e-6)
    # an untrained model would equal bilinear exactly (zeroed output layer): training changed it
    assert not torch.allclose(y, final.centre_up(x))


def test_refuses_to_overwrite(data, trained):
    before = snapshot(trained)
    with pytest.raises(PSSRError, match="exists already"):
        run(data, trained, cycles=2)
    assert snapshot(trained) == before
    names = ["s_1_x_e2", "s_1_x_e2_best_32"]
    train.check_names(names, trained, None, resume=False, force=True, final="s_1_x_e2")  # --force: no error
    with pytest.raises(PSSRError, match="--force"):
        train.check_names(names, trained, None, resume=False, force=False, final="s_1_x_e2")


def test_discriminative_rates_and_frozen_encoder(data):
    """Three layer groups (the original's): a range [lo, hi] is spaced linearly from the encoder's first half
    to the decoder (paper, Methods), a plain rate is the original's slice(lr); freeze() stops the encoder's
    weights (BatchNorm stays trainable, as in fastai)."""
    spec = find_dataset(data, NAME, "s", 64, 1, 32)
    model = build_model(dict(arch="resnet18", self_attention=False))
    learn = Learner(make_dls(spec, 1, 32, 4), model, metrics=sr_metrics(), splitter=unet_splitter,
                    loss_func=torch.nn.functional.mse_loss)

    class Spy(Callback):
        def after_batch(self):
            self.lrs = [h["lr"] for h in self.opt.hypers]
            raise CancelFitException

    learn.freeze()
    enc_w = model.unet.layers[0][0].weight.clone()
    spy = Spy()
    learn.fit_one_cycle(1, lr_arg([1e-5, 1e-3]), cbs=spy)
    top = spy.lrs[2]  # one-cycle's warm-up scales every group alike
    assert spy.lrs == pytest.approx([top / 100, top * 0.505, top])
    assert torch.equal(model.unet.layers[0][0].weight, enc_w)
    learn.fit_one_cycle(1, lr_arg(1e-3), cbs=spy)
    assert spy.lrs == pytest.approx([spy.lrs[2] / 10, spy.lrs[2] / 10, spy.lrs[2]])
    assert not model.unet.layers[0][0].weight.requires_grad
    learn.unfreeze()
    assert model.unet.layers[0][0].weight.requires_grad


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_follows_the_cpus_bf16(data, monkeypatch, native):
    """bf16 autocast on CPU only where the CPU computes bf16 natively (emulated, it made a training step 9x
    slower than fp32); channels_last either way."""
    monkeypatch.setattr(training, "native_bf16", lambda: native)
    spec = find_dataset(data, NAME, "s", 64, 1, 32)
    model = build_model(dict(arch="resnet18", self_attention=False, encoder_stride=16))
    learn = Learner(make_dls(spec, 1, 32, 4), model, loss_func=torch.nn.functional.mse_loss)
    seen = []
    model.unet.layers[0][0].register_forward_hook(lambda m, i, o: seen.append((o.dtype, o.is_contiguous(
        memory_format=torch.channels_last))))

    class StopAtFirst(Callback):
        def after_batch(self):
            raise CancelFitException

    name = training.add_precision(learn, torch.device("cpu"))
    learn.fit(1, 1e-4, cbs=StopAtFirst())
    assert seen[0] == ((torch.bfloat16 if native else torch.float32), True)
    assert ("bf16" in name) == native and "channels_last" in name


def test_schedule_rounds_and_stages(data, tmp_path):
    """Progressive resizing: each round keeps its own best model; round 2 starts from round 1's best."""
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps({"rounds": [
        {"size": 32, "tile_sz": 64, "bs": 4, "frozen": {"epochs": 1, "lr": 1e-3},
         "unfrozen": {"epochs": 1, "lr": [1e-5, 1e-3]}},
        {"size": 64, "tile_sz": 64, "bs": 4, "unfrozen": {"epochs": 1, "lr": [1e-5, 1e-4]}}]}))
    rounds = read_schedule(sched)
    assert [s.freeze for s in rounds[0].stages] == [True, False] and rounds[1].epochs == 1
    starts = []
    orig = training.BestModel.before_fit

    def spy(self):
        starts.append({k: v.clone() for k, v in training.unwrap(self.model).state_dict().items()})
        orig(self)

    training.BestModel.before_fit = spy
    try:
        run(data, tmp_path / "m", schedule=str(sched))
    finally:
        training.BestModel.before_fit = orig
    m = tmp_path / "m"
    assert {"s_1_x_e3_best_32.pth", "s_1_x_e3_best_64.pth", "s_1_x_e3.pth"} <= {p.name for p in m.iterdir()}
    best32 = torch.load(m / "s_1_x_e3_best_32.pth", weights_only=True)
    assert all(torch.equal(starts[-1][k], v) for k, v in best32.items())  # round 2 began at round 1's best
    assert json.loads((m / "s_1_x_e3.json").read_text())["size"] == 64


def test_schedule_round_reads_its_own_data_set(data, tmp_path):
    """A round may name its own data set (the paper's EM rounds use tiles of their own size)."""
    shutil.copytree(data / NAME, data / "other")
    sched = tmp_path / "s.json"
    rounds = [{"size": 32, "tile_sz": 64, "bs": 4, "unfrozen": {"epochs": 1, "lr": 1e-3}},
              {"size": 64, "tile_sz": 64, "bs": 4, "unfrozen": {"epochs": 1, "lr": 1e-3}, "datasetname": "gone"}]
    sched.write_text(json.dumps({"rounds": rounds}))
    with pytest.raises(PSSRError, match="gone"):
        run(data, tmp_path / "m", schedule=str(sched))
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())  # checked before writing
    rounds[1]["datasetname"] = "other"
    sched.write_text(json.dumps({"rounds": rounds}))
    run(data, tmp_path / "m", schedule=str(sched))
    plan = json.loads((tmp_path / "m" / "s_1_x_e2.json").read_text())["schedule"]
    assert [r["datasetname"] for r in plan] == [None, "other"]


def test_resume_after_interruption(data, tmp_path, monkeypatch):
    """Killed after epoch 1 of 2: the best model and the checkpoint survive; --resume trains only epoch 2."""
    run_interrupted(monkeypatch, 0, data, tmp_path, cycles=2)
    names = {p.name for p in tmp_path.iterdir()}
    assert "s_1_x_e2.ckpt" in names and "s_1_x_e2_best_32.pth" in names and "s_1_x_e2.pth" not in names
    with pytest.raises(PSSRError, match="--resume"):
        run(data, tmp_path, cycles=2)
    with pytest.raises(PSSRError, match="different"):
        run(data, tmp_path, cycles=2, resume=True, lr=5e-4)
    epochs = []
    monkeypatch.setattr(training.BestModel, "after_epoch",
                        lambda self, f=training.BestModel.after_epoch: (epochs.append(self.epoch), f(self)))
    run(data, tmp_path, cycles=2, resume=True)
    assert epochs == [0, 1]  # epoch 0 is skipped (no training), epoch 1 trained
    meta = json.loads((tmp_path / "s_1_x_e2.json").read_text())
    assert meta["epochs"] == 2 and not (tmp_path / "s_1_x_e2.ckpt").exists()


def test_weight_average_is_an_exponential_moving_average():
    """Every `every` steps the average moves towards the weights by every / (epochs x steps per epoch); integer
    buffers are copied; the model gets the average when the fit ends."""
    from types import SimpleNamespace
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    cb = training.WeightAverage(epochs=1)
    cb.learn = SimpleNamespace(model=model, dls=SimpleNamespace(train=range(8)), training=True)
    cb.before_fit()
    assert cb.keep == pytest.approx(0.5)  # 4 steps of 8 per epoch
    seen = []
    for step in range(1, 13):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(step)
        model[1].num_batches_tracked.fill_(step)
        cb.after_batch()
        if step % 4 == 0:
            seen.append(step)
    assert seen == [4, 8, 12]
    want = (0.5 * 4 + 0.5 * 8) * 0.5 + 0.5 * 12  # started at step 4, then two updates of one half each
    cb.after_fit()
    assert all(torch.allclose(p, torch.full_like(p, want)) for p in model.parameters())
    assert int(model[1].num_batches_tracked) == 12


def test_keep_better_keeps_the_average_only_within_1_percent_of_the_best_epoch():
    """The averaged weights stay when their validation loss is at most 1% above the best epoch's; otherwise
    the best epoch's saved weights come back."""
    from types import SimpleNamespace
    saved = {"weight": torch.full((2, 2), 7.0), "bias": torch.zeros(2)}
    for loss, kept in ((0.5, True), (1.0, True), (1.009, True), (1.011, False), (1.5, False)):
        model = torch.nn.Linear(2, 2)
        average = {k: v.clone() for k, v in model.state_dict().items()}
        learn = SimpleNamespace(model=model, validate=lambda loss=loss: [loss, 0.0, 0.0])
        best = SimpleNamespace(best=1.0, saved=lambda: saved)
        assert training.keep_better(learn, best) is kept
        want = average if kept else saved
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def test_average_epochs_end_to_end_and_resume(data, tmp_path, monkeypatch):
    """--average_epochs: the final model holds the averaged weights where they validate within 1% of the best
    epoch's, the .json says which it holds, and an interrupted run's checkpoint carries the average into
    --resume."""
    run_interrupted(monkeypatch, 2, data, tmp_path, cycles=4, average_epochs=3)
    ck = torch.load(tmp_path / "s_1_x_e4.ckpt", weights_only=True)
    assert set(ck["average"]) == set(ck["model"])  # 6 steps of 2 per epoch: the average started at step 4
    chosen = []
    monkeypatch.setattr(training, "keep_better", lambda learn, best, f=training.keep_better:
                        chosen.append(f(learn, best)) or chosen[-1])
    run(data, tmp_path, cycles=4, average_epochs=3, resume=True)
    final, meta = load_model("s_1_x_e4", tmp_path)
    best, _ = load_model("s_1_x_e4_best_32", tmp_path)
    assert meta["average_epochs"] == 3 and meta["epochs"] == 4 and len(chosen) == 1
    assert meta["final_weights"] == ("average" if chosen[0] else "best_epoch")
    same = all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), best.state_dict().values()))
    assert same != chosen[0]
    from fastai.learner import load_learner  # our own files: each export holds its .pth's weights
    for name, model in (("s_1_x_e4", final), ("s_1_x_e4_best_32", best)):
        exported = load_learner(tmp_path / f"{name}.pkl").model.state_dict()
        assert all(torch.equal(exported[k].float(), v.float()) for k, v in model.state_dict().items())
    with pytest.raises(PSSRError, match="--average_epochs"):
        run(data, tmp_path / "bad", average_epochs=-1)
    with pytest.raises(PSSRError, match="give --crap_func"):  # pre-made pairs: nothing to blur
        run(data, tmp_path / "bad", crap_blur="0,1")
    with pytest.raises(PSSRError, match="give --crap_func"):
        run(data, tmp_path / "bad", crap_bandwidth="0,1")
    with pytest.raises(PSSRError, match="give --crap_func"):
        run(data, tmp_path / "bad", crap_bandwidth_share=0.5)
    with pytest.raises(PSSRError, match="give --crap_func"):
        run(data, tmp_path / "bad", crap_counts="5,80")
    with pytest.raises(PSSRError, match="give --crap_func"):
        run(data, tmp_path / "bad", crap_counts_share=0.5)
    with pytest.raises(PSSRError, match="give --crap_func"):
        run(data, tmp_path / "bad", crap_clean_share=0.2)


def test_an_average_worse_than_the_best_epoch_is_not_kept(data, tmp_path, monkeypatch):
    """An average that validates worse (here: weights ruined at the end of the fit) gives way to the best
    epoch, and the .json says so."""
    def ruined(self):
        with torch.no_grad():
            for p in training.unwrap(self.model).parameters():
                p.add_(torch.randn_like(p))
    monkeypatch.setattr(training.WeightAverage, "after_fit", ruined)
    run(data, tmp_path, cycles=2, average_epochs=1)
    final, meta = load_model("s_1_x_e2", tmp_path)
    best, _ = load_model("s_1_x_e2_best_32", tmp_path)
    assert meta["final_weights"] == "best_epoch"
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), best.state_dict().values()))


class FakeClock:
    """TimeBudget's clock, moved on by `batch` seconds after each training batch (validation is free)."""

    def __init__(self, batch: float):
        self.now, self.batch = 0.0, batch

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def fake_clock(monkeypatch):
    """A FakeClock at 10 s per training batch; the learning rate of every training batch lands in `clock.lrs`."""
    clock, orig = FakeClock(10.0), training.TimeBudget.after_batch
    clock.lrs = []

    def after_batch(self):
        if self.training:
            clock.lrs.append(self.opt.hypers[-1]["lr"])
            clock.now += clock.batch
        orig(self)

    monkeypatch.setattr(training, "time", clock)
    monkeypatch.setattr(training.TimeBudget, "after_batch", after_batch)
    return clock


def test_minutes_fits_epochs_and_schedule_to_the_time(data, tmp_path, fake_clock):
    """--minutes: 8 tiles at bs 4 make 2 batches (20 fake seconds) per epoch; planned 2 epochs, 1.7 minutes
    (102 s) hold 5: the fit re-plans after the first epoch, runs 5, and its one-cycle schedule (warm-up, then
    annealing) spans exactly those 5: the last batch trains near the cycle's final rate, not mid-cycle. The
    model is named without `_e{epochs}`; its .json records the 5 epochs and the budget."""
    run(data, tmp_path, cycles=2, minutes=1.7)
    meta = json.loads((tmp_path / "s_1_x.json").read_text())
    assert meta["epochs"] == 5 and meta["schedule"][0]["stages"][0]["minutes"] == 1.7
    lrs = fake_clock.lrs
    assert len(lrs) == 10 and fake_clock.now == 100.0
    peak = int(np.argmax(lrs))
    assert 1 <= peak <= 3 and lrs[peak] > 0.9e-3  # warm-up over the first 25% of the 5 epochs
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:])) and lrs[-1] < 1e-3 / 20


def test_minutes_shrinks_a_plan_that_does_not_fit(data, tmp_path, fake_clock):
    """A first plan of 6 epochs in 1 minute (3 fit): 3 run, and the schedule, a sixth of it spent in the first
    epoch, completes over the other two (past its peak, annealing down to the last batch)."""
    run(data, tmp_path, cycles=6, minutes=1)
    assert json.loads((tmp_path / "s_1_x.json").read_text())["epochs"] == 3
    lrs = fake_clock.lrs
    assert len(lrs) == 6 and lrs[-1] < lrs[-2] < lrs[-3] and lrs[-1] < 0.25 * max(lrs)


def test_minutes_resumes_with_what_was_left(data, tmp_path, fake_clock, monkeypatch):
    """Killed after epoch 2 of a --minutes run (100 s budget): --resume continues the schedule where it stopped
    and gets the 60 s the run had left, not a new budget: 5 epochs in all, the schedule completed."""
    run_interrupted(monkeypatch, 1, data, tmp_path, cycles=5, minutes=100 / 60)
    before = list(fake_clock.lrs)
    fake_clock.now += 1000  # the machine was off for a while
    run(data, tmp_path, cycles=5, minutes=100 / 60, resume=True)
    assert json.loads((tmp_path / "s_1_x.json").read_text())["epochs"] == 5
    assert len(before) == 4 and len(fake_clock.lrs) == 10 and fake_clock.lrs[-1] < 1e-3 / 20
    assert before[-1] > fake_clock.lrs[4] > 0.5e-3  # annealing on from the peak, not a warm-up from lr/25


@pytest.mark.parametrize("kw, match", [(dict(minutes=0), "positive"), (dict(minutes="soon"), "positive"),
                                       (dict(minutes=5, schedule="any.json"), "one training stage")])
def test_minutes_bad_values(data, tmp_path, kw, match):
    with pytest.raises(PSSRError, match=match):
        run(data, tmp_path, **kw)


def test_load_name_continues(data, trained, tmp_path, capsys):
    """--load_name of the model being written continues it (weights and optimizer state) and may replace it."""
    shutil.copytree(trained, tmp_path / "m")
    before = torch.load(tmp_path / "m" / "s_1_x_e2.pth", weights_only=True)
    run(data, tmp_path / "m", cycles=2, load_name="s_1_x_e2", pretrain=True,
        weights=str(trained.parent / "r18.pth"))
    assert "loaded s_1_x_e2 (with optimizer state)" in capsys.readouterr().out
    after = torch.load(tmp_path / "m" / "s_1_x_e2.pth", weights_only=True)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(PSSRError, match="encoder_stride"):
        run(data, tmp_path / "m", load_name="s_1_x_e2", save_name="z", pretrain=True,
            weights=str(trained.parent / "r18.pth"), encoder_stride=32)


def test_load_name_widens_one_frame_model(data, trained, tmp_path, capsys):
    """A 1-frame model starts a 5-frame one (without its optimizer state); network options must still match."""
    shutil.copytree(trained, tmp_path / "m")
    five = dict(save_name="z", datasetname="t_5_tiny", lr_type="t", n_frames=5)
    with pytest.raises(PSSRError, match="imagenet_norm"):
        run(data, tmp_path / "m", load_name="s_1_x_e2", **five)
    run(data, tmp_path / "m", load_name="s_1_x_e2", pretrain=True, weights=str(trained.parent / "r18.pth"), **five)
    assert "loaded s_1_x_e2 (its frame as the centre of 5)" in capsys.readouterr().out
    assert load_model("t_5_z_e1", tmp_path / "m")[1]["n_frames"] == 5


def test_load_name_needs_the_same_lr_head(tmp_path):
    """An lr_space model saved before `lr_head` was recorded (its .json has none: the `icnr` head) cannot start a
    run with today's `subpixel` head: a one-line error naming the option, not a state-dict mismatch."""
    old = dict(arch="resnet18", lr_space=True, encoder_stride=8)
    save_model(build_model(old), old, "old", tmp_path)
    js = tmp_path / "old.json"
    js.write_text(json.dumps({k: v for k, v in json.loads(js.read_text()).items() if k != "lr_head"}))
    new = make_meta(**old, lr_head="subpixel")
    with pytest.raises(PSSRError, match="lr_head=icnr"):
        train.load_start(build_model(new), "old", tmp_path, new)
    assert train.load_start(build_model(make_meta(**old)), "old", tmp_path, make_meta(**old)) is None


def test_pretrain_needs_weights(data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(PSSRError, match="--weights PATH"):
        run(data, tmp_path / "m", pretrain=True)
    assert not (tmp_path / "m").exists()


def broken_copy(data: Path, tmp: Path, name: str = NAME) -> Path:
    shutil.copytree(data / name, tmp / name)
    return tmp


@pytest.mark.parametrize("case, match", [
    ("no_dataset", "data set not found"),
    ("no_folder", "missing data set folder"),
    ("incomplete", "incomplete"),
    ("unpaired", "do not pair"),
    ("depth", "frame"),
    ("small", "smaller than --size"),
    ("crap", "unknown crappifier"),
    ("arch", "unknown arch"),
    ("head", "unknown --lr_head"),
    ("ssim", "--ssim_weight must be"),
])
def test_bad_inputs(data, tmp_path, case, match):
    """One-line PSSRError naming the problem; nothing in the models folder is written or changed."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "keep.pth").write_bytes(b"x")
    before = snapshot(models)
    kw = {}
    if case == "no_dataset":
        kw["datasetname"] = "nope"
    elif case == "no_folder":
        kw["tile_sz"] = 128
    elif case == "incomplete":
        d = broken_copy(data, tmp_path)
        (d / NAME / "dataset.json").unlink()
        kw["data_path"] = str(d)
    elif case == "unpaired":
        d = broken_copy(data, tmp_path)
        next((d / NAME / "hr_s_64" / "valid").rglob("*.tif")).unlink()
        kw["data_path"] = str(d)
    elif case == "depth":
        d = broken_copy(data, tmp_path, "t_5_tiny")
        f = next((d / "t_5_tiny" / "lr_t_64_t_5" / "train").rglob("*.npy"))
        np.save(f, np.load(f)[:3])
        kw.update(data_path=str(d), datasetname="t_5_tiny", lr_type="t", n_frames=5)
    elif case == "small":
        kw["size"] = 128
    elif case == "crap":
        d = broken_copy(data, tmp_path)
        info = json.loads((d / NAME / "dataset.json").read_text())
        (d / NAME / "dataset.json").write_text(json.dumps({**info, "crap_func": "bogus"}))
        kw["data_path"] = str(d)
    elif case == "arch":
        kw["arch"] = "resnet99"
    elif case == "head":
        kw.update(lr_space=True, lr_head="espcn")
    elif case == "ssim":
        kw["ssim_weight"] = -0.1
    with pytest.raises(PSSRError, match=match) as e:
        run(data, models, **kw)
    assert "\n" not in str(e.value)
    assert snapshot(models) == before


def test_cli_exit_status_and_one_line_error(data, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--datasetname", "nope", "--data_path", str(data),
                        "--model_dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_single_process(data, tmp_path):
    """The `accelerate launch` path (fastai DistributedTrainer: DDP model, DistributedDL, accelerator backward)
    in one CPU process with the gloo backend, as a launcher would start each rank; on a 5-frame model, with
    --minutes (every rank runs rank 0's plan of epochs)."""
    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "ACCELERATE_USE_CPU": "true"}
    args = [sys.executable, "-c",
            "import sys, train, fastai.distributed as d; from utils.errors import run_cli\n"
            "seen = []\n"
            "orig = d.DistributedTrainer.before_fit\n"
            "def spy(self): orig(self); seen.append(type(self.learn.model).__name__)\n"
            "d.DistributedTrainer.before_fit = spy\n"
            "sys.argv = ['train.py'] + sys.argv[1:]\n"
            "run_cli(train.main)\n"
            "print('wrapped:', seen)\n",
            "--datasetname", "t_5_tiny", "--lr_type", "t", "--n_frames", "5", "--size", "64",
            "--data_path", str(data), "--model_dir", str(tmp_path), "--arch", "resnet18", "--fp32",
            "--tile_sz", "64", "--bs", "4", "--cycles", "1", "--noattn", "--minutes", "5"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrapped: ['DistributedDataParallel']" in r.stdout
    model, meta = load_model("t_5_combo", tmp_path)  # --minutes: rank 0's epoch plan broadcast (gloo)
    assert meta["n_frames"] == 5 and meta["lr_type"] == "t"
    with torch.no_grad():
        assert model(torch.rand(1, 5, 32, 32)).shape == (1, 1, 128, 128)


def test_dataloaders_crop_both_splits(data):
    dls = make_dls(find_dataset(data, "t_5_tiny", "t", 64, 5, 32), 5, 32, 4)
    for dl in (dls.train, dls.valid):
        xb, yb = dl.one_batch()
        assert xb.shape == (4, 5, 8, 8) and yb.shape == (4, 1, 32, 32) and xb.max() <= 1


def test_paired_augment_keeps_lr_and_hr_aligned():
    """One random draw, both scales: the augmented LR stays the block mean of the augmented HR (exactly without
    rotation/zoom, closely with them), and validation crops are the fixed centre."""
    from fixtures_train import downsample, structure
    from utils.data import CentreCrop, PairedAugment
    rng = np.random.default_rng(1)
    hr = torch.from_numpy(np.stack([structure(rng, 128)]))
    hr = torch.nn.functional.avg_pool2d(hr[None], 5, 1, 2, count_include_pad=False)[0]  # smooth: interpolation-safe
    lr = torch.from_numpy(downsample(hr.numpy(), 4))
    exact, affine = PairedAugment(64, 4, p_affine=0.0), PairedAugment(64, 4, max_rotate=10, max_zoom=1.1, p_affine=1.0)
    for _ in range(8):
        a_lr, a_hr = exact((lr, hr), split_idx=0)
        assert a_lr.shape == (1, 16, 16) and a_hr.shape == (1, 64, 64)
        assert torch.allclose(torch.from_numpy(downsample(a_hr.numpy(), 4)), a_lr, atol=1e-5)
        a_lr, a_hr = affine((lr, hr), split_idx=0)
        err = (torch.from_numpy(downsample(a_hr.numpy(), 4)) - a_lr).abs().mean()
        assert err < 0.1 * a_lr.std()  # a one-LR-pixel misalignment gives several times this
    c_lr, c_hr = CentreCrop(64, 4)((lr, hr), split_idx=1)
    assert torch.equal(c_hr, hr[:, 32:96, 32:96]) and torch.equal(c_lr, lr[:, 8:24, 8:24])
    # a 5-frame stack (frame i = frame 0 + i): the centre stays the HR's, and some stacks become the windows of
    # a movie's first or last frames, as image_gen fills them
    stack, windows = torch.cat([lr + i for i in range(5)]), set()
    for _ in range(100):
        a_lr, a_hr = exact((stack, hr), split_idx=0)
        assert torch.allclose(torch.from_numpy(downsample(a_hr.numpy(), 4))[0], a_lr[2] - 2, atol=1e-5)
        windows.add(tuple(round(float((a_lr[i] - a_lr[2]).mean())) + 2 for i in range(5)))
    assert windows == {(0, 1, 2, 3, 4), (2, 2, 2, 3, 4), (0, 1, 2, 2, 2)}
