"""Step 3 training speed: images/s of full training steps (forward, MSE loss, backward, Adam step).

    python bench/bench_train.py [--arch resnet34] [--bs 4] [--steps 4] [--sizes 128,256] [--device cpu]

Side by side: default path (bilinear first, U-Net at HR) vs --lr_space (U-Net at LR, pixel-shuffle at the end;
encoder stride 16 and the `subpixel` head as train.py builds it, and with the `icnr` head of older models),
fp32 vs the fast path train.py picks (CPU: bf16 autocast + channels_last; CUDA: bf16/fp16 autocast).
Random tensors stand in for tiles so that only the model is timed. Two warm-up steps (oneDNN builds its bf16
kernels on first use), then `steps` timed steps; the median step time is reported, because the other work on a
shared 2-core machine inflates single steps.
"""
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from utils.errors import run_cli  # noqa: E402
from utils.model import LR_HEADS, build_model  # noqa: E402


# network paths: the paper's (U-Net at HR), --lr_space as train.py builds it, and with the head of older models
PATHS = {"default": dict(), "lr_space": dict(lr_space=True, encoder_stride=16, lr_head=LR_HEADS[0]),
         "lr_space icnr": dict(lr_space=True, encoder_stride=16, lr_head="icnr")}


def images_per_s(arch: str, path: str, fast: bool, size: int, bs: int, steps: int, device: str) -> float:
    """Training throughput of one configuration."""
    torch.manual_seed(0)
    model = build_model(dict(arch=arch, **PATHS[path])).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(bs, 1, size // 4, size // 4, device=device)
    y = torch.rand(bs, 1, size, size, device=device)
    cpu = device == "cpu"
    if fast and cpu:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast(device_type="cpu" if cpu else "cuda", dtype=torch.bfloat16, enabled=fast))

    def step():
        with ctx():
            loss = F.mse_loss(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = []
    for _ in range(2 + steps):
        t = time.perf_counter()
        step()
        if not cpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return bs / statistics.median(times[2:])


def main(arch: str = "resnet34", bs: int = 4, steps: int = 4, sizes: str = "128,256", device: str = "cpu") -> None:
    sizes = [int(s) for s in str(sizes).split(",")] if not isinstance(sizes, tuple) else list(sizes)
    print(f"train.py step throughput, {arch}, bs {bs}, median of {steps} steps, device {device}, "
          f"{torch.get_num_threads()} threads (images/s, output size)")
    print(f"{'size':>6} {'path':>13} {'fp32':>8} {'fast':>8} {'fast/fp32':>10}")
    rows = {}
    for size in sizes:
        for path in PATHS:
            r = [images_per_s(arch, path, fast, size, bs, steps, device) for fast in (False, True)]
            rows[(size, path)] = r
            print(f"{size:>6} {path:>13} {r[0]:8.2f} {r[1]:8.2f} {r[1] / r[0]:9.2f}x", flush=True)
    for size in sizes:
        d = rows[(size, "default")]
        for path in list(PATHS)[1:]:
            l = rows[(size, path)]
            print(f"{path} speed-up at {size}²: fp32 {l[0] / d[0]:.1f}x, fast path {l[1] / d[1]:.1f}x")


if __name__ == "__main__":
    run_cli(main)
