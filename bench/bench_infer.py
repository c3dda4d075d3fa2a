"""Inference speed and memory (not a test): images/s and output megapixels/s, peak RSS of a huge tiled run.

    python bench/bench_infer.py [--reps 3] [--big 5000] [--tiled_out 2048] [--device cpu] [--out bench/out/bench_infer.json]

Speed: untrained ResNet-34 U-Nets (weights do not change the cost) for a 512² output
(one 128² LR image) and a tiled 2048² output (512² LR, 128-px LR tiles, 16 px overlap; --tiled_out),
default (U-Net at HR after bilinear x4) and --lr_space models, fp32 and the CPU fast path
(bfloat16 autocast + channels_last). Memory: a `big`² LR frame restored tile by tile into a
(4·big)² float32 TIFF in a subprocess; the network there is the bilinear baseline, because
a U-Net would need hours on a CPU for 400 MP and the memory under test is the engine's
(row buffer + streaming writer), which does not depend on the network.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: F401,E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402

from utils.model import build_model, make_meta  # noqa: E402
from utils.restore import Predictor, restore_frame  # noqa: E402

BIG_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[3])
import utils
from utils.restore import Predictor, Upsampler, restore_file
from utils.sources import open_source

def peak_rss():
    # VmHWM restarts at exec; ru_maxrss would carry the parent's peak over
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
with open_source(sys.argv[1]) as src:
    base = peak_rss()
    t = time.perf_counter()
    restore_file(src, sys.argv[2], Predictor(Upsampler(4), 4, batch_size=8, multiple=1), 4, tile=256, overlap=16)
    dt = time.perf_counter() - t
print(base, peak_rss(), dt)
"""


def time_restore(pred: Predictor, lr: np.ndarray, tile, reps: int, warmup: bool = True) -> float:
    """Median seconds for one whole restored image (after a warm-up run)."""
    def run():
        for _ in restore_frame(lambda y0, h: lr[None, y0:y0 + h], *lr.shape, pred, 4, tile, 16):
            pass
    if warmup:
        run()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def speed(reps: int, device: str, tiled_out: int) -> list:
    rng = np.random.default_rng(0)
    rows = []
    for lr_space in (False, True):
        model = build_model(make_meta(lr_space=lr_space)).eval()
        for fast in (False, True):
            pred = Predictor(model, 4, device, fast, batch_size=4)
            for label, n_lr, tile in (("512² single", 128, None), (f"{tiled_out}² tiled", tiled_out // 4, 128)):
                lr = rng.random((n_lr, n_lr), dtype=np.float32)
                # the single-image runs warm the model up; a tiled run is many tiles already
                dt = time_restore(pred, lr, tile, reps if tile is None else 1, warmup=tile is None)
                mp = (4 * n_lr) ** 2 / 1e6
                rows.append(dict(model="lr_space" if lr_space else "default", path="bf16+CL" if fast else "fp32",
                                 case=label, seconds=round(dt, 3), images_per_s=round(1 / dt, 3),
                                 out_mpix_per_s=round(mp / dt, 3)))
                print(rows[-1], flush=True)
    return rows


def big_memory(n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        src, dest = Path(d) / "lr.tif", Path(d) / "out.tif"
        rng = np.random.default_rng(0)
        tifffile.imwrite(src, np.repeat(rng.integers(0, 65535, (n // 10, n), dtype=np.uint16), 10, axis=0))
        r = subprocess.run([sys.executable, "-c", BIG_SCRIPT, src, dest, ROOT], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr)
        base, peak, dt = r.stdout.split()[-3:]
        out_bytes = dest.stat().st_size
    return dict(lr=f"{n}x{n}", out=f"{4 * n}x{4 * n} float32", out_gib=round(out_bytes / 2**30, 2),
                rss_before_gib=round(int(base) / 2**30, 3), peak_rss_gib=round(int(peak) / 2**30, 3),
                rss_growth_mib=round((int(peak) - int(base)) / 2**20, 1), seconds=round(float(dt), 1))


def main(reps: int = 3, big: int = 5000, tiled_out: int = 2048, device: str = "cpu",
         out: str = "bench/out/bench_infer.json") -> None:
    """reps: timed runs per single-image case; big: LR side of the memory run (0: skip); tiled_out: output
    side of the tiled case (128-px LR tiles, 16 px overlap)."""
    torch.manual_seed(0)
    info = dict(torch=torch.__version__, threads=torch.get_num_threads(), device=device,
                cpu_bf16=torch.backends.mkldnn.is_available())
    print(info)
    rows = speed(reps, device, tiled_out)
    mem = big_memory(big) if big else None
    print(mem)
    dest = ROOT / out
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(dict(info=info, speed=rows, memory=mem), indent=1))
    print(f"wrote {dest}")


if __name__ == "__main__":
    from utils.errors import run_cli
    run_cli(main)
