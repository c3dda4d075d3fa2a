"""Step 2 speed and memory on a 20000² uint16 TIFF: tile-bounded reads vs loading the frame first.

    python bench/bench_tiling.py [--n 20000] [--tiles 200] [--tile 128] [--workdir bench/out]

Each way runs in a fresh process (peak RSS from getrusage of that child) and does the same
per-tile work: draw a box with background rejection, normalize with the frame's
percentiles, crappify (new_crap_AG_SP), quantize. `bounded` reads only each tile's box via
utils.sources (as tile_from_info.py does); `whole` reads the whole frame into memory first,
as the original tiler did. Also timed: the full tile_from_info.py command (with writes).
"""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils  # noqa: E402,F401
from utils.errors import run_cli  # noqa: E402


def make_big_tiff(path: Path, n: int, rows: int = 500) -> Path:
    """A textured n x n uint16 TIFF written strip by strip (never whole in memory)."""
    import tifffile
    if path.exists() and tifffile.TiffFile(path).series[0].shape == (n, n):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    base = np.random.default_rng(0).integers(100, 4000, (rows, n)).astype(np.uint16)
    tifffile.imwrite(path, (np.roll(base, y // rows, axis=1) for y in range(0, n, rows)),
                     shape=(n, n), dtype=np.uint16, rowsperstrip=rows)
    return path


def tile_loop(path: str, way: str, tiles: int, tile: int) -> None:
    """The measured work, run in a child process; prints tiles/s."""
    import tifffile
    from utils.crappifiers import crappify
    from utils.norm import normalize, percentiles, to_uint8
    from utils.sources import open_source
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    with open_source(path) as src:
        if way == "whole":
            frame = tifffile.imread(path)
            read = lambda y, x: frame[y:y + tile, x:x + tile]  # noqa: E731
            mi, ma = percentiles(frame)
        else:
            read = lambda y, x: src.read(0, 0, 0, (y, x, tile, tile))  # noqa: E731
            mi, ma = percentiles(src.read(0, 0, 0, step=10), max_pixels=10**9)  # as the step-1 CSV has them
        for _ in range(tiles):
            raw = read(int(rng.integers(0, src.ny - tile)), int(rng.integers(0, src.nx - tile)))
            hr = to_uint8(normalize(raw, mi, ma))
            to_uint8(crappify("new_crap_AG_SP", hr / np.float32(255), 4, rng))
    print(tiles / (time.perf_counter() - t0))


def _child(args) -> tuple:
    """(stdout's last line, seconds, peak RSS MB) of a fresh Python running `args`."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
            "(r.stdout.strip().splitlines() or [''])[-1]); sys.stderr.write(r.stderr[-2000:] if r.returncode else '')")
    r = subprocess.run([sys.executable, "-c", code, sys.executable, *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True)
    rc, secs, kib, *last = r.stdout.split(maxsplit=3)
    if int(rc):
        raise SystemExit(f"benchmark child failed: {args}\n{r.stderr}")
    return (last[0] if last else ""), float(secs), int(kib) / 1024


def main(n: int = 20000, tiles: int = 200, tile: int = 128, workdir: str = "bench/out") -> None:
    work = ROOT / workdir
    t0 = time.perf_counter()
    big = make_big_tiff(work / "src" / "big" / "train" / "big.tif", n)
    valid = work / "src" / "big" / "valid" / "big.tif"
    valid.parent.mkdir(parents=True, exist_ok=True)
    if not valid.exists():
        valid.symlink_to(big)
    print(f"{n}x{n} uint16 TIFF ({big.stat().st_size / 1e6:.0f} MB) ready in {time.perf_counter() - t0:.1f} s")
    me = Path(__file__).resolve()
    rows = []
    for way in ("bounded", "whole"):
        out, secs, mb = _child([me, "tile_loop", big, way, tiles, tile])
        rows.append((f"{way} ({'tile box reads' if way == 'bounded' else 'frame loaded first, original'})",
                     float(out), mb))
    _, s1, mb1 = _child(["gen_sample_info.py", "--out", work / "big.csv", work / "src", "--force"])
    _, s2, mb2 = _child(["tile_from_info.py", "--out", work / "ds", "--info", work / "big.csv", "--tile", tile,
                         "--n_train", tiles, "--n_valid", 0, "--crap_func", "new_crap_AG_SP", "--clean"])
    print(f"\n{'way':48s} {'tiles/s':>8s} {'peak RSS MB':>12s}")
    for name, tps, mb in rows:
        print(f"{name:48s} {tps:8.1f} {mb:12.0f}")
    print(f"{'gen_sample_info.py (2 files, step 1)':48s} {'':>8s} {mb1:12.0f}   ({s1:.1f} s)")
    print(f"{'tile_from_info.py (with writes, CSV, startup)':48s} {tiles / s2:8.1f} {mb2:12.0f}   ({s2:.1f} s)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "tile_loop":
        tile_loop(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        run_cli(main)
