"""Training machinery for train.py: metrics, precision callbacks, best-model/checkpoint callbacks, schedules.

A run is a list of stages grouped in rounds. A round fixes the HR crop size, tile size and batch size and keeps
one best model `{name}_best_{size}`; its stages are fit_one_cycle calls (frozen encoder or not, one lr or a
discriminative range). Each round starts from the previous round's best model (progressive resizing) and may
read its own data set (the paper's EM rounds use 128/256/512-px tiles, Supplementary Table 3).
"""
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import fastai.callback.fp16  # noqa: F401  (patches Learner.to_fp16/to_bf16)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle)
import fastai.distributed  # noqa: F401  (patches Learner.distrib_ctx; needs accelerate)
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import SaveModelCallback
from fastai.learner import Learner
from fastai.metrics import AvgMetric
from fastai.torch_core import distrib_barrier, params, rank_distrib
from fastcore.foundation import L
import numpy as np

from .errors import PSSRError, fail
from .fileio import atomic_path
from .lrstats import lr_reference
from .model import load_safe, model_paths, save_model
from .onthefly import FreshPairs, noise_free
from .speed import native_bf16

__all__ = ["psnr", "ssim", "sr_metrics", "CPUFastPath", "add_precision", "unet_splitter", "BestModel",
           "EpochCheckpoint", "TimeBudget", "Stage", "Round", "read_schedule", "single_round", "lr_arg", "N_GROUPS",
           "ckpt_path", "read_ckpt", "unwrap", "plain_opt_state", "bilinear_baseline", "noise_free_gain",
           "valid_lr_reference", "export_learner", "fit_rounds", "plan_of", "WeightAverage", "keep_better"]


def psnr(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """Mean PSNR (dB) of a batch of [0,1] images; predictions are clipped to the displayable range first."""
    mse = ((pred.float().clamp(0, 1) - targ.float()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean()


def _gauss_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """Mean SSIM with an 11x11 Gaussian window (sigma 1.5, data range 1), as skimage with gaussian_weights."""
    x, y = pred.float().clamp(0, 1), targ.float()
    w = _gauss_window().to(x.device).expand(x.shape[1], 1, -1, -1)
    conv = lambda t: F.conv2d(t, w, groups=x.shape[1])
    mx, my = conv(x), conv(y)
    sxx, syy, sxy = conv(x * x) - mx ** 2, conv(y * y) - my ** 2, conv(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.mean()


def sr_metrics() -> list:
    return [AvgMetric(psnr), AvgMetric(ssim)]


class CPUFastPath(Callback):
    """channels_last on CPU, with bf16 autocast where the CPU computes bf16 natively: about 2x faster
    training than fp32 on an AMX Xeon; where bf16 is emulated it is 9x slower, so `bf16=False` keeps fp32.

    fastai's to_bf16/to_fp16 only autocast CUDA, so CPU runs need their own callback."""
    order = 10

    def __init__(self, bf16: bool = True):
        self.bf16 = bf16

    def before_fit(self):
        self.learn.model = self.model.to(memory_format=torch.channels_last)
        self.ctx = None

    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)
        if self.bf16:
            self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
            self.ctx.__enter__()

    def after_pred(self):
        self.learn.pred = self.pred.float()

    def after_loss(self):
        self._leave()

    def after_batch(self):
        self._leave()  # a cancelled batch never reaches after_loss

    def _leave(self):
        if self.ctx is not None:
            self.ctx.__exit__(None, None, None)
            self.ctx = None

    def after_fit(self):
        self._leave()
        self.learn.model = self.model.to(memory_format=torch.contiguous_format)


def add_precision(learn: Learner, device: torch.device, fp32: bool = False) -> str:
    """Pick the fast numeric path for `device`; returns its name for the log and metadata."""
    if fp32:
        return "fp32"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            learn.to_bf16()
            return "bf16 (CUDA autocast)"
        learn.to_fp16()
        return "fp16 (CUDA autocast)"
    bf16 = native_bf16()
    learn.add_cb(CPUFastPath(bf16))
    return "bf16 autocast + channels_last (CPU)" if bf16 else "fp32 + channels_last (CPU: bfloat16 is emulated)"


def _broadcast(self, t: list, rank: int) -> list:
    """fastai's DistributedDL broadcasts batch indices as CUDA tensors (NCCL only); gloo (CPU processes,
    `accelerate launch --cpu`, the single-process test) needs CPU tensors."""
    cuda = torch.distributed.get_backend() == "nccl"
    t = torch.tensor(t, dtype=torch.long, device="cuda" if cuda else "cpu")
    torch.distributed.broadcast(t, rank)
    return t.cpu().tolist()


fastai.distributed.DistributedDL._broadcast = _broadcast


def unwrap(model: nn.Module) -> nn.Module:
    """The PSSRNet inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


MAX_EPOCHS = 4  # a TimeBudget stage runs at most this many times its first plan of epochs
N_GROUPS = 3  # layer groups, as the original's fastai v1 split of a ResNet U-Net


def unet_splitter(model: nn.Module) -> list:
    """The original's three layer groups: encoder stem..layer2, encoder layer3..end, decoder + head (fastai v1
    split a ResNet body at its 7th child, layer3). `freeze()` trains only the decoder; discriminative rates
    rise from the first group to the last."""
    m = unwrap(model)
    body = m.unet.layers[0]
    cut = min(6, len(body) - 1)  # an --encoder_stride 8/16 body is shorter than a full ResNet
    low, high = params(body[:cut]), params(body[cut:])
    body_ids = {id(p) for p in low + high}
    return [low, high, [p for p in params(m) if id(p) not in body_ids]]


def lr_arg(lr: Union[float, Sequence[float]], n_groups: int = N_GROUPS) -> List[float]:
    """Per-layer-group learning rates. A float `lr` is the original's `slice(lr)`: lr/10 for every group but the
    last. A range [lo, hi] is spaced linearly from the first group to the last, as the paper's Methods
    ("Discriminative Learning Rates": "a linearly spaced learning rate range lr_2") say; the original code
    (fastai's slice(lo, hi)) spaced it geometrically."""
    if isinstance(lr, (list, tuple)):
        if len(lr) != 2:
            fail(None, f"a learning-rate range needs [lo, hi], got {lr}")
        return [float(v) for v in np.linspace(float(lr[0]), float(lr[1]), n_groups)]
    return [float(lr) / 10] * (n_groups - 1) + [float(lr)]


@dataclass
class Stage:
    """One fit_one_cycle call; with `minutes`, its schedule is fitted to that wall-clock time (TimeBudget) and
    `epochs` is only the first plan."""
    epochs: int
    lr: Union[float, List[float]]
    freeze: bool = False
    minutes: Optional[float] = None


@dataclass
class Round:
    """One resolution of progressive resizing: HR crop `size` from `tile_sz` tiles, batch `bs`, from the data
    set `datasetname` (None: train.py's --datasetname)."""
    size: int
    tile_sz: int
    bs: int
    stages: List[Stage] = field(default_factory=list)
    datasetname: Optional[str] = None

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)


def _stage(path: Path, d: Optional[dict], freeze: bool) -> Optional[Stage]:
    if d is None:
        return None
    try:
        st = Stage(int(d["epochs"]), d["lr"], freeze)
    except (KeyError, TypeError, ValueError) as e:
        fail(path, f"a stage needs 'epochs' and 'lr' ({e})")
    lr_arg(st.lr)
    return st if st.epochs > 0 else None


def read_schedule(path: Path) -> List[Round]:
    """Rounds from a JSON schedule file (format in README, example: recipes/em_progressive.json)."""
    path = Path(path)
    if not path.is_file():
        fail(path, "schedule file not found")
    try:
        spec = json.loads(path.read_text())
        rounds = []
        for r in spec["rounds"]:
            stages = [s for s in (_stage(path, r.get("frozen"), True), _stage(path, r.get("unfrozen"), False)) if s]
            rounds.append(Round(int(r["size"]), int(r.get("tile_sz", r["size"])), int(r["bs"]), stages,
                                r.get("datasetname")))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        fail(path, f"not a valid schedule ({type(e).__name__}: {e}); see README 'Step 3'")
    if not rounds or not all(r.stages for r in rounds):
        fail(path, "a schedule needs at least one round, each with a 'frozen' or 'unfrozen' stage")
    return rounds


def single_round(size: int, tile_sz: int, bs: int, cycles: int, lr: float, lr_start: Optional[float],
                 freeze: bool, minutes: Optional[float] = None) -> List[Round]:
    """The original train.py: one fit_one_cycle of `cycles` epochs at `lr` (or the range lr_start..lr), or of
    as many epochs as fit in `minutes`."""
    return [Round(size, tile_sz, bs, [Stage(cycles, [lr_start, lr] if lr_start else lr, freeze, minutes)])]


def plain_opt_state(state):
    """Optimizer state as plain lists, dicts, tensors and numbers (fastai keeps `L`s in it), so that it loads
    with `torch.load(weights_only=True)`: a checkpoint or `.opt` from elsewhere can then never run code."""
    if isinstance(state, dict):
        return {k: plain_opt_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple, L)):
        return [plain_opt_state(v) for v in state]
    return state.item() if isinstance(state, np.generic) else state


def ckpt_path(name: str, model_dir: Path) -> Path:
    return Path(model_dir) / f"{name}.ckpt"


def _skipped(learn: Learner) -> bool:
    """True for the epochs fastai skips when a fit resumes with start_epoch."""
    skip = getattr(learn, "skip_to_epoch", None)
    return skip is not None and learn.epoch < skip._skip_to


class BestModel(SaveModelCallback):
    """SaveModelCallback writing the contract's files (`.pth` state dict + `.json` metadata) at every
    improvement of the validation loss, so the best epoch survives an interruption. No optimizer state here
    (twice the weights' size, at every improvement): the epoch checkpoint and the final model carry it."""

    def __init__(self, name: str, model_dir: Path, meta: dict):
        super().__init__(monitor="valid_loss", fname=name, with_opt=False, reset_on_fit=False)
        self.model_dir, self.meta, self.epochs_done = Path(model_dir), meta, 0

    def after_epoch(self):
        if _skipped(self.learn):
            return
        self.epochs_done += 1
        super().after_epoch()

    def _save(self, name: str):
        if rank_distrib():
            return
        meta = {**self.meta, "epochs": self.epochs_done, "best_valid_loss": float(self.best)}
        self.last_saved_path = save_model(unwrap(self.model), meta, name, self.model_dir)

    def saved(self) -> Optional[dict]:
        """The best epoch's weights as written (None before the first)."""
        pth = model_paths(self.fname, self.model_dir)["pth"]
        return torch.load(pth, map_location="cpu", weights_only=True) if pth.exists() else None

    def after_fit(self, **kwargs):
        distrib_barrier()  # rank 0 has written the best weights: every rank loads the same ones
        weights = self.saved()
        if weights is not None:
            unwrap(self.model).load_state_dict(weights)


class WeightAverage(Callback):
    """An exponential moving average of the weights over about the last `epochs` epochs of a stage, which
    replaces the best epoch's weights when the fit ends (`keep_better` then checks it). Single snapshots of a
    noisy fit scatter: on held-out EM the average over ~4 epochs scored +0.00-0.03 dB over the best epoch of
    the same run, SSIM within 0.002 (README, "What to expect"). The buffers (BatchNorm statistics) are
    averaged alike."""
    order = BestModel.order + 2  # its after_fit follows BestModel's reload of the best epoch
    every = 4  # training steps between updates: each reads and writes every weight (~2% of a step on 2 cores)

    def __init__(self, epochs: float, state: Optional[dict] = None):
        self.epochs, self.avg, self.n = float(epochs), state, 0

    def before_fit(self):
        self.keep = 1 - self.every / max(self.every, self.epochs * len(self.dls.train))
        if self.avg is not None:  # resumed: the checkpoint's average goes where the weights are
            current = unwrap(self.model).state_dict()
            self.avg = {k: v.to(current[k].device) for k, v in self.avg.items()}

    @torch.no_grad()
    def after_batch(self):
        if not self.training or _skipped(self.learn):
            return
        self.n += 1
        if self.n % self.every:
            return
        current = unwrap(self.model).state_dict()
        if self.avg is None:
            self.avg = {k: v.detach().clone() for k, v in current.items()}
            return
        for k, v in current.items():
            if v.is_floating_point():
                self.avg[k].lerp_(v, 1 - self.keep)
            else:
                self.avg[k].copy_(v)

    def after_fit(self):
        if self.avg is not None:
            unwrap(self.model).load_state_dict(self.avg)


class EpochCheckpoint(Callback):
    """After every epoch, write `{name}.ckpt` (weights, optimizer, stage, epoch, best loss, the weight average)
    so `--resume` continues from the last completed epoch of the same command."""
    order = BestModel.order + 1

    def __init__(self, path: Path, step: int, plan: list, best: BestModel, budget: Optional["TimeBudget"] = None,
                 average: Optional[WeightAverage] = None):
        self.path, self.step, self.plan, self.best, self.budget = Path(path), step, plan, best, budget
        self.average = average

    def after_epoch(self):
        if rank_distrib() or _skipped(self.learn):
            return
        state = {"model": unwrap(self.model).state_dict(), "opt": plain_opt_state(self.opt.state_dict()),
                 "step": self.step, "epoch": self.epoch, "n_epoch": self.n_epoch, "best": float(self.best.best),
                 "epochs_done": self.best.epochs_done, "plan": self.plan,
                 "budget": self.budget.snapshot() if self.budget else None,
                 "average": self.average.avg if self.average else None}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


def _from_rank0(value: int) -> int:
    """Rank 0's `value` on every rank (each measures its own clock; all must run the same epochs)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return int(box[0])
    return value


class TimeBudget(Callback):
    """Fit a one-cycle schedule to `minutes` of wall clock. Before each epoch the epochs still to run are
    planned again from the mean epoch time so far (validation included), and the schedule's position
    (`pct_train`, which fastai's ParamScheduler reads) advances so that the cycle ends with the last epoch
    that fits; then the fit stops. quick.sh's plan times a few steps before training: on an AVX-512 EPYC
    whose first bf16 steps are slow it planned 10.8 minutes of a 20-minute budget, and a machine busier
    than at the probe would overrun it. `epochs` is the first plan, `max_epochs` the most the fit may run."""
    order = 100  # last: it stops the fit in after_epoch, once BestModel and EpochCheckpoint have kept the epoch

    def __init__(self, minutes: float, epochs: int, max_epochs: int, state: Optional[dict] = None):
        self.seconds, self.first, self.max_epochs = 60 * float(minutes), int(epochs), int(max_epochs)
        self.state = state or {"p": 0.0, "spent": 0.0, "done": 0}

    def before_fit(self):
        self.t0 = time.monotonic() - self.state["spent"]  # a resumed run gets what the interrupted one had left
        self.p, self.done = float(self.state["p"]), int(self.state["done"])

    def epochs_left(self) -> int:
        """Epochs still to run, this one included."""
        if self.done == 0:
            k = self.first
        else:
            spent = time.monotonic() - self.t0
            k = int((self.seconds - spent) / (spent / self.done))
        return max(1, min(k, self.max_epochs - self.epoch))

    def before_train(self):
        k = _from_rank0(self.epochs_left())
        self.step = (1 - self.p) / (k * len(self.dls.train))
        self.learn.pct_train = self.p

    def after_batch(self):
        if self.training:
            self.p = min(1.0, self.p + self.step)
            self.learn.pct_train = self.p

    def after_train(self):
        self.done += 1

    def after_epoch(self):
        if not _skipped(self.learn) and self.p >= 1 - 1e-6:
            raise CancelFitException()

    def snapshot(self) -> dict:
        return {"p": self.p, "spent": time.monotonic() - self.t0, "done": self.done}


def read_ckpt(path: Path, plan: list) -> dict:
    """The checkpoint `--resume` continues from; it must come from the same training plan."""
    if not Path(path).is_file():
        fail(path, "no checkpoint to resume (the run finished, or never completed an epoch)")
    ck = load_safe(path, "checkpoint")
    if not isinstance(ck, dict) or ck.get("plan") != plan:
        fail(path, "checkpoint was written by a run with different rounds/epochs/lr; resume with the same options")
    return ck


def export_learner(learn: Learner, dest: Path, weights: Optional[dict] = None) -> None:
    """fastai export (`.pkl`), written under a temporary name first; with `weights`, of those (the model keeps
    its own)."""
    if rank_distrib():
        return
    model = unwrap(learn.model)
    keep = {k: v.clone() for k, v in model.state_dict().items()} if weights is not None else None
    try:
        if weights is not None:
            model.load_state_dict(weights)
        with atomic_path(dest) as tmp:
            learn.export(Path(tmp).resolve())
    finally:
        if keep is not None:
            model.load_state_dict(keep)


def bilinear_centre(xb: torch.Tensor, scale: int) -> torch.Tensor:
    """Bilinear upsampling of a batch's centre frame: the baseline every restoration is compared with."""
    c = xb.shape[1] // 2
    return F.interpolate(xb[:, c:c + 1].float(), scale_factor=scale, mode="bilinear", align_corners=False)


@torch.no_grad()
def bilinear_baseline(learn: Learner, scale: int) -> tuple:
    """(loss, PSNR, SSIM) of bilinear upsampling of the validation LR tiles (centre frame) against their HR,
    the loss by the learner's own loss function, so it compares with the model's validation loss."""
    l, p, s, n = 0.0, 0.0, 0.0, 0
    for xb, yb in learn.dls.valid:
        up = bilinear_centre(xb, scale)
        l += float(learn.loss_func(up, yb)) * len(xb)
        p += float(psnr(up, yb)) * len(xb)
        s += float(ssim(up, yb)) * len(xb)
        n += len(xb)
    return l / n, p / n, s / n


@torch.no_grad()
def noise_free_gain(learn: Learner, scale: int, bs: int = 8) -> Optional[float]:
    """PSNR gain (dB) over bilinear upsampling on the validation tiles crappified without noise, or None where
    pairs are not drawn on the fly or the crappifier has no noise strength. Validation LR carries the training
    noise, which hides a model that smooths away what nearly noise-free LR holds (a 1-frame model of a small
    fluorescence source gained +0.01 dB here and lost 0.28 dB to bilinear on noise-free held-out LR)."""
    va = getattr(learn.dls.valid, "dataset", None)
    if not isinstance(va, FreshPairs) or not len(va):
        return None
    clean = FreshPairs(va.items, va.n_frames, va.size, noise_free(va.draws), train=False)
    try:
        clean[0]
    except PSSRError:
        return None
    model = unwrap(learn.model)
    was_training, dev = model.training, next(model.parameters()).device
    model.eval()
    gain = 0.0
    for i in range(0, len(clean), bs):
        xb, yb = (torch.stack(t).to(dev) for t in zip(*(clean[j] for j in range(i, min(i + bs, len(clean))))))
        gain += float(psnr(model(xb), yb) - psnr(bilinear_centre(xb, scale), yb)) * len(xb)
    model.train(was_training)
    return gain / len(clean)


def valid_lr_reference(learn: Learner) -> dict:
    """`utils.lrstats.lr_reference` of the validation LR tiles' centre frames: what image_gen compares the LR it
    restores with."""
    return lr_reference(x[len(x) // 2].float().cpu().numpy() for xb, _ in learn.dls.valid for x in xb)


def plan_of(rounds: List[Round]) -> list:
    """Rounds as plain data, to store in checkpoints and metadata."""
    return [asdict(r) for r in rounds]


def _load_opt(learn: Learner, state: Optional[dict]) -> None:
    """Optimizer state from a checkpoint or a loaded model; a different layer-group layout starts fresh."""
    if state is None:
        return
    try:
        learn.opt.load_state_dict({**state, "hypers": L(state["hypers"])})
    except Exception:
        print("note: saved optimizer state does not fit this stage; starting it fresh")


# The best epoch's validation loss is the least of many noisy ones, biased low; within this share of it the two
# validate alike. On real EM the average validated 0.05% above the best epoch of its run and scored 0.00-0.03
# dB better on held-out slices (README, "What to expect").
AVERAGE_SLACK = 0.01


def keep_better(learn: Learner, best: BestModel) -> bool:
    """Keep the weight average the model holds unless its validation loss is more than AVERAGE_SLACK above the
    best epoch's, else go back to the best epoch; True if the average stays. The average is of the last
    epochs: on a small source that overfits they are the worst (nuclei movie: validation PSNR 26.2 dB in
    epoch 4 of 48, 20.7 at the end, and the average scored up to 7 dB below bilinear on held-out frames)."""
    loss = float(learn.validate()[0])
    keep = bool(_from_rank0(int(loss <= float(best.best) * (1 + AVERAGE_SLACK))))  # one decision for every rank
    if not rank_distrib():
        print(f"weight average: valid loss {loss:.5f}, best epoch {float(best.best):.5f}: keeping "
              f"{'the average' if keep else 'the best epoch'}")
    if not keep:
        unwrap(learn.model).load_state_dict(best.saved())
    return keep


def fit_rounds(rounds: List[Round], make_learner, final_name: str, model_dir: Path, meta_of,
               ckpt: Optional[dict] = None, opt_state: Optional[dict] = None,
               average_epochs: float = 0) -> Tuple[Learner, int, str]:
    """Run every stage of every round; each round keeps `{final_name}_best_{size}` and starts from the previous
    round's best weights (the model object carries them over); with `average_epochs` each stage ends with
    its weights averaged over about that many last epochs instead, where they validate within AVERAGE_SLACK
    of the best epoch (`WeightAverage`, `keep_better`). `ckpt` resumes mid-run, `opt_state` comes with
    `--load_name`. Returns the last learner, the epochs run (a stage with `minutes` decides its own) and which
    weights it ends with (`average` or `best_epoch`)."""
    plan, step, learn, ran, kept = plan_of(rounds), 0, None, 0, "best_epoch"
    ck_path = ckpt_path(final_name, model_dir)
    for rnd in rounds:
        first, step_end = step, step + len(rnd.stages)
        if ckpt is not None and ckpt["step"] >= step_end:
            step = step_end  # finished before the interruption; its best model is on disk
            ran += rnd.epochs
            continue
        learn = make_learner(rnd)
        best = BestModel(f"{final_name}_best_{rnd.size}", model_dir, meta_of(rnd))
        learn.add_cb(best)
        for stage in rnd.stages:
            start, budget_state, average_state = 0, None, None
            learn.freeze() if stage.freeze else learn.unfreeze()
            if ckpt is not None and step < ckpt["step"]:
                step += 1
                ran += stage.epochs
                continue
            if ckpt is not None and step == ckpt["step"]:
                unwrap(learn.model).load_state_dict(ckpt["model"])
                _load_opt(learn, ckpt["opt"])
                best.best, best.epochs_done, start = ckpt["best"], ckpt["epochs_done"], ckpt["epoch"] + 1
                budget_state, average_state = ckpt.get("budget"), ckpt.get("average")
                ckpt = None
            elif step == first == 0 and opt_state is not None:
                _load_opt(learn, opt_state)
            budget = (TimeBudget(stage.minutes, stage.epochs, MAX_EPOCHS * stage.epochs, budget_state)
                      if stage.minutes else None)
            average = WeightAverage(average_epochs, average_state) if average_epochs else None
            cbs = ([EpochCheckpoint(ck_path, step, plan, best, budget, average)] + ([budget] if budget else [])
                   + ([average] if average else []))
            # SyncBatchNorm is CUDA-only; CPU processes (gloo) keep plain BatchNorm, and need accelerate's `cpu`:
            # without it, on a machine without CUDA, accelerate sees no distributed run and wraps nothing.
            cpu = learn.dls.device.type != "cuda"
            with learn.distrib_ctx(sync_bn=not cpu, cpu=cpu):
                learn.fit_one_cycle(budget.max_epochs if budget else stage.epochs, lr_arg(stage.lr), cbs=cbs,
                                    start_epoch=start)
            ran += budget.done if budget else stage.epochs
            # fastai leaves DistributedTrainer (and its Accelerator) on the learner when WORLD_SIZE is 1;
            # it would pile up over stages and cannot be pickled by export.
            learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, fastai.distributed.DistributedTrainer)])
            if average and average.avg is not None:  # none before its first update (a very short fit)
                kept = "average" if keep_better(learn, best) else "best_epoch"
            step += 1
        learn.remove_cb(best)
        export_learner(learn, model_paths(best.fname, model_dir)["pkl"], best.saved() if average_epochs else None)
    return learn, ran, kept
