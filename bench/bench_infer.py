"""Inference speed and memory (not a test): images/s side by side with the peer, peak RSS of a huge tiled run.

    python bench/bench_infer.py [--reps 7] [--threads 2] [--peer_site DIR] [--tiled_out 2048] [--big 5000]
                                [--device cpu] [--out bench/out/bench_infer.json]

Speed: untrained networks (weights do not change the cost) restore one 128² LR image into a 512² output, through
`Predictor` + `restore_frame` as image_gen.py runs them, in interleaved rounds (one run of every variant per round,
median over rounds: the machine may be shared). Ours: the default U-Net (HR space), `--lr_space` as train.py
builds it (encoder stride 16, `subpixel` head), with the `icnr` head of the models before it, and at stride 32
with that head (the first --lr_space models), each as before this benchmark's
optimizations (`Predictor(optimize=False)`: the trained module as is; `--fast` = bf16 autocast + channels_last)
and after (`utils.speed.inference_model`), fp32 and bf16. Peer: PSSR2 (`pssr` 2.4.0 `ResUNet(channels=1,
scale=4)`) in fp32, bf16 autocast + channels_last, and with bf16 weights (`.to(bfloat16)`, its fastest here); it
needs `--peer_site DIR` holding the package (`pip install --no-deps --target DIR pssr==2.4.0 timm pytorch-msssim`)
and is skipped with a note otherwise. `--tiled_out`: a tiled 2048² output (128-px LR tiles, 16 px overlap, 4 tiles
a batch) for ours `--lr_space`. Memory: a `big`² LR frame restored tile by tile into a (4·big)² float32 TIFF in a
subprocess; the network there is the bilinear baseline, because a U-Net would need hours on a CPU for 400 MP and
the memory under test is the engine's (row buffer + streaming writer), which does not depend on the network.
"""
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: F401,E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402

from utils.fileio import atomic_path  # noqa: E402
from utils.model import LR_HEADS, build_model, make_meta  # noqa: E402
from utils.restore import Predictor, restore_frame  # noqa: E402

MEM_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[3])
import utils
from utils.restore import Predictor, RestoreSpec, Upsampler, restore_file
from utils.sources import open_source

def peak_rss():
    # VmHWM restarts at exec; ru_maxrss would carry the parent's peak over
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
with open_source(sys.argv[1]) as src:
    base = peak_rss()
    t = time.perf_counter()
    restore_file(src, sys.argv[2], Predictor(Upsampler(4), 4, batch_size=8, multiple=1),
                 RestoreSpec(tile=256, overlap=16, dtype=sys.argv[4]))
    dt = time.perf_counter() - t
print(base, peak_rss(), dt)
"""


def measure_restore(src: Path, dest: Path, dtype: str = "float32") -> tuple:
    """(RSS before, peak RSS, seconds) of restoring `src` into `dest` (TIFF, or OME-Zarr for `.zarr`) with the
    bilinear network in a fresh process, so that the peak counts this restoration only."""
    r = subprocess.run([sys.executable, "-c", MEM_SCRIPT, src, dest, ROOT, dtype], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    base, peak, dt = r.stdout.split()[-3:]
    return int(base), int(peak), float(dt)


def run_once(pred: Predictor, lr: np.ndarray, tile) -> float:
    """Seconds for one whole restored image."""
    t = time.perf_counter()
    for _ in restore_frame(lambda y0, h: lr[None, y0:y0 + h], *lr.shape, pred, 4, tile, 16):
        pass
    return time.perf_counter() - t


class BF16Weights(torch.nn.Module):
    """The peer as its own users would run it in bf16: the whole module cast, input cast, float32 out."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net.to(torch.bfloat16).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()


def peer_variants(peer_site: Optional[str], device: str) -> dict:
    """PSSR2 ResUNet predictors, or {} with a note when the package is not there."""
    if not peer_site:
        print("peer: skipped (no --peer_site DIR holding pssr 2.4.0)")
        return {}
    sys.path.insert(0, str(Path(peer_site).resolve()))
    try:
        from pssr.models import ResUNet
    except Exception as e:  # a missing dependency of the package, or no package
        print(f"peer: skipped (pssr not importable from {peer_site}: {type(e).__name__}: {e})")
        return {}
    torch.manual_seed(0)
    net = ResUNet(channels=1, scale=4).eval()
    return {("peer PSSR2 ResUNet", "fp32"): Predictor(net, 4, device, optimize=False, batch_size=4),
            ("peer PSSR2 ResUNet", "bf16 autocast"): Predictor(net, 4, device, fast=True, optimize=False, batch_size=4),
            ("peer PSSR2 ResUNet", "bf16 weights"): Predictor(BF16Weights(copy.deepcopy(net)), 4, device,
                                                              optimize=False, batch_size=4)}


OURS = {"default": dict(), "lr_space": dict(lr_space=True, encoder_stride=16, lr_head=LR_HEADS[0]),
        "lr_space icnr head": dict(lr_space=True, encoder_stride=16, lr_head="icnr"),
        "lr_space stride 32": dict(lr_space=True, encoder_stride=32, lr_head="icnr")}


def our_variants(device: str, names=tuple(OURS)) -> dict:
    out = {}
    for name in names:
        model = build_model(make_meta(**OURS[name])).eval()
        for fast in (False, True):
            path = "bf16" if fast else "fp32"
            out[(name, f"before, {path}")] = Predictor(model, 4, device, fast, batch_size=4, optimize=False)
            out[(name, f"after, {path}")] = Predictor(model, 4, device, fast, batch_size=4)
    return out


def timed_rounds(variants: dict, lr: np.ndarray, tile, reps: int) -> dict:
    """{key: [seconds per round]}: one warm-up each, then `reps` rounds running every variant once."""
    for pred in variants.values():
        run_once(pred, lr, tile)
    times = {k: [] for k in variants}
    for _ in range(reps):
        for k, pred in variants.items():
            times[k].append(run_once(pred, lr, tile))
    return times


def rows_from(times: dict, case: str, out_side: int) -> list:
    rows = []
    for (model, path), ts in times.items():
        med = float(np.median(ts))
        rows.append(dict(model=model, path=path, case=case, seconds=round(med, 4), images_per_s=round(1 / med, 3),
                         out_mpix_per_s=round(out_side ** 2 / 1e6 / med, 3),
                         spread_images_per_s=[round(1 / max(ts), 3), round(1 / min(ts), 3)]))
        print(rows[-1], flush=True)
    return rows


def speed(reps: int, device: str, tiled_out: int, peer_site: Optional[str]) -> list:
    rng = np.random.default_rng(0)
    lr = rng.random((128, 128), dtype=np.float32)
    variants = {**peer_variants(peer_site, device), **our_variants(device)}
    rows = rows_from(timed_rounds(variants, lr, None, reps), "512² single", 512)
    if tiled_out:
        big = rng.random((tiled_out // 4, tiled_out // 4), dtype=np.float32)
        tiled = {k: v for k, v in variants.items() if k[0] == "lr_space"}
        rows += rows_from(timed_rounds(tiled, big, 128, max(1, reps // 3)), f"{tiled_out}² tiled", tiled_out)
    return rows


def table(rows: list) -> str:
    """Markdown: one line per network and path, images/s (median of rounds, [slowest, fastest])."""
    lines = ["| network | path | case | images/s | range | output MP/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["spread_images_per_s"]
        lines.append(f"| {r['model']} | {r['path']} | {r['case']} | {r['images_per_s']:.2f} | {lo:.2f}–{hi:.2f} "
                     f"| {r['out_mpix_per_s']:.2f} |")
    return "\n".join(lines)


def big_memory(n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        src, dest = Path(d) / "lr.tif", Path(d) / "out.tif"
        rng = np.random.default_rng(0)
        tifffile.imwrite(src, np.repeat(rng.integers(0, 65535, (n // 10, n), dtype=np.uint16), 10, axis=0))
        base, peak, dt = measure_restore(src, dest)
        out_bytes = dest.stat().st_size
    return dict(lr=f"{n}x{n}", out=f"{4 * n}x{4 * n} float32", out_gib=round(out_bytes / 2**30, 2),
                rss_before_gib=round(int(base) / 2**30, 3), peak_rss_gib=round(int(peak) / 2**30, 3),
                rss_growth_mib=round((int(peak) - int(base)) / 2**20, 1), seconds=round(float(dt), 1))


def main(reps: int = 7, big: int = 5000, tiled_out: int = 2048, device: str = "cpu", threads: int = 2,
         peer_site: Optional[str] = None, out: str = "bench/out/bench_infer.json") -> None:
    """reps: rounds of the single-image case (a third as many tiled); threads: torch CPU threads; peer_site: folder
    with the pssr package (else the peer is skipped); big: LR side of the memory run (0: skip); tiled_out: output
    side of the tiled case (0: skip)."""
    torch.set_num_threads(threads)
    info = dict(torch=torch.__version__, threads=torch.get_num_threads(), device=device,
                cpu_bf16=torch.backends.mkldnn.is_available(), load_average_before=os.getloadavg())
    print(info)
    rows = speed(reps, device, tiled_out, peer_site)
    info["load_average_after"] = os.getloadavg()
    print(table(rows))
    mem = big_memory(big) if big else None
    print(mem)
    dest = ROOT / out
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        Path(tmp).write_text(json.dumps(dict(info=info, speed=rows, memory=mem), indent=1))
    print(f"wrote {dest}")


if __name__ == "__main__":
    from utils.errors import run_cli
    run_cli(main)
