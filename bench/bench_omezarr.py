"""Peak memory of OME-Zarr output (not a test): a `big`² LR frame restored into a (4·big)² OME-Zarr with its pyramid.

    python bench/bench_omezarr.py [--big 5000] [--dtype float32] [--out bench/out/bench_omezarr.json]

Runs in a subprocess (VmHWM then counts only this restoration) the same engine as image_gen.py
--out_format ome-zarr: 256-px LR tiles, 16 px overlap, chunk rows streamed into level 0, then every
pyramid level from the one above, two chunk rows at a time. The network is the bilinear baseline, as in
bench_infer.py: the memory under test is the engine's and the writer's, which the network does not change,
and a U-Net would need hours on a CPU for 400 MP. The default is a 20000² float32 output (1.5 GiB of
pixels); issue 10 asks for less than 1 GB peak RSS.
"""
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import tifffile  # noqa: E402

from bench_infer import measure_restore  # noqa: E402

LIMIT = 1 << 30  # issue 10: a 20000² output under 1 GB RSS


def lr_image(n: int) -> np.ndarray:
    """Smooth structure plus noise (uint16): compresses like a real restoration, not like zeros."""
    rng = np.random.default_rng(0)
    y = np.linspace(0, 40, n, dtype=np.float32)[:, None]
    x = np.linspace(0, 40, n, dtype=np.float32)[None, :]
    img = 20000 + 15000 * np.sin(y) * np.cos(x) + rng.normal(0, 2000, (n, n)).astype(np.float32)
    return np.clip(img, 0, 65535).astype(np.uint16)


def check(dest: Path, n: int) -> list:
    """Level shapes (halving down to one chunk), and level 1 = the 2x2 mean of level 0 at a few places."""
    import zarr
    group = zarr.open_group(str(dest), mode="r")
    shapes = [list(group[str(k)].shape) for k in range(len(group))]
    assert shapes[0] == [4 * n, 4 * n] and max(shapes[-1]) <= 512, shapes
    for y, x in [(0, 0), (n, 3 * n // 2), (2 * n - 1, 2 * n - 1)]:
        block = group["0"][2 * y:2 * y + 2, 2 * x:2 * x + 2].astype(np.float64)
        assert abs(float(group["1"][y, x]) - block.mean()) < 1e-3, (y, x)
    return shapes


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(big: int = 5000, dtype: str = "float32", out: str = "bench/out/bench_omezarr.json") -> None:
    """big: LR side (output 4·big); dtype: output pixel type."""
    with tempfile.TemporaryDirectory() as d:
        src, dest = Path(d) / "lr.tif", Path(d) / "out.ome.zarr"
        tifffile.imwrite(src, lr_image(big))
        base, peak, dt = measure_restore(src, dest, dtype)
        levels = check(dest, big)
        res = dict(lr=f"{big}x{big}", out=f"{4 * big}x{4 * big} {dtype}", levels=levels,
                   pixels_gib=round((4 * big) ** 2 * np.dtype(dtype).itemsize / 2 ** 30, 2),
                   on_disk_gib=round(du(dest) / 2 ** 30, 2), rss_before_mib=round(int(base) / 2 ** 20, 1),
                   peak_rss_mib=round(int(peak) / 2 ** 20, 1),
                   rss_growth_mib=round((int(peak) - int(base)) / 2 ** 20, 1),
                   seconds=round(float(dt), 1), under_1gb=int(peak) < LIMIT)
    print(res)
    dest = ROOT / out
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=1))
    print(f"wrote {dest}")
    if int(peak) >= LIMIT:
        raise SystemExit(f"peak RSS {int(peak) / 2 ** 20:.0f} MiB is not under 1 GB")


if __name__ == "__main__":
    from utils.errors import run_cli
    run_cli(main)
