"""Inference engine: sliding windows, tiling/blending/seams, streaming TIFF output, bounded memory."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

import utils  # noqa: F401
from utils.errors import PSSRError
from utils.norm import normalize
from utils.restore import (Predictor, RestoreSpec, frame_windows, plan_frames, restore_file, restore_frame, tile_starts,
                           write_tif_stream)
from utils.sources import open_source

sys.path.insert(0, str(Path(__file__).parent))
from restore_helpers import ConvSR, smooth_image, write_stack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_edge_windows_repeat_the_edge_frame_and_keep_every_frame():
    w = frame_windows(7, 5)
    assert [t for t, _ in w] == list(range(7))
    assert w[0][1] == [0, 0, 0, 1, 2] and w[1][1] == [0, 0, 1, 2, 3] and w[6][1] == [4, 5, 6, 6, 6]
    assert w[3][1] == [1, 2, 3, 4, 5]
    assert all(0 <= i < 2 for _, ins in frame_windows(2, 5) for i in ins)  # shorter than the window
    assert frame_windows(1, 5) == [(0, [0] * 5)]


def test_original_flag_drops_edge_frames():
    w = frame_windows(7, 5, drop_edges=True)
    assert [t for t, _ in w] == [2, 3, 4] and w[0][1] == [0, 1, 2, 3, 4]


def test_tile_starts_cover_with_overlap():
    for n, tile, ov in [(300, 64, 16), (65, 64, 8), (64, 64, 8), (1000, 256, 32)]:
        s = tile_starts(n, tile, ov)
        assert s[0] == 0 and s[-1] + min(tile, n) == n
        assert all(b - a <= tile - ov for a, b in zip(s, s[1:]))


def _timelapse(tmp_path, nt=6, size=48):
    movie = np.stack([smooth_image((size, size), seed=t) for t in range(nt)])
    return write_stack(tmp_path / "movie.tif", movie, "TYX", 0.08)


@pytest.mark.parametrize("drop, expect", [(False, 6), (True, 2)])
def test_multiframe_output_frame_count(tmp_path, drop, expect):
    src_path = _timelapse(tmp_path)
    pred = Predictor(ConvSR(4, 5), 4, multiple=1)
    with open_source(src_path, live=True) as src:
        shape = restore_file(src, tmp_path / "out.tif", pred, RestoreSpec(4, 5, "t", drop_edges=drop, dtype="uint8"))
    with tifffile.TiffFile(tmp_path / "out.tif") as t:
        assert t.series[0].axes == ("TYX" if expect > 1 else "YX") and t.series[0].shape == (expect, 192, 192)
    assert shape == (expect, 192, 192)


def test_multiframe_window_sees_neighbour_frames(tmp_path):
    """Frame t of the output depends on frames t-2..t+2 (the edge frame repeated), not on t alone."""
    src_path = _timelapse(tmp_path, nt=5)
    pred = Predictor(ConvSR(4, 5), 4, multiple=1)
    with open_source(src_path, live=True) as src:
        restore_file(src, tmp_path / "a.tif", pred, RestoreSpec(4, 5, "t"))
        single = np.concatenate(list(restore_frame(
            lambda y0, h: np.stack([normalize(src.read(0, 0, 0, box=(y0, 0, h, src.nx)), *np.percentile(
                src.read(0, 0, 0), (2, 99.99)))] * 5), src.ny, src.nx, pred, 4)))
    out = tifffile.imread(tmp_path / "a.tif")
    assert out.shape == (5, 192, 192)
    assert np.abs(out[0] - single).max() > 1e-3  # frame 0 mixes frames 0,0,0,1,2


def test_incompatible_frames_and_channels(tmp_path):
    zstack = write_stack(tmp_path / "z.tif", np.stack([smooth_image((32, 32), s) for s in range(4)]), "ZYX")
    with open_source(zstack) as src:
        with pytest.raises(PSSRError, match="z.tif.*needs 5 frames along time"):
            plan_frames(src, 5, "t")
        with pytest.raises(PSSRError, match="channel 2 does not exist"):
            plan_frames(src, 1, "s", channel=2)
        with pytest.raises(PSSRError, match="fewer than the model's 5"):
            plan_frames(src, 5, "z", drop_edges=True)
        plan, n_out = plan_frames(src, 5, "z")
        assert n_out["Z"] == 4 and [f[1] for f in plan[0][3]] == [0, 0, 0, 1, 2]


def _restore(img, model, tile=None, overlap=16, seam="cosine", scale=4):
    pred = Predictor(model, scale, multiple=1)
    return np.concatenate(list(restore_frame(lambda y0, h: img[None, y0:y0 + h], *img.shape, pred, scale,
                                             tile, overlap, seam)))


def _seam_ratio(out, seams, axis):
    """Mean |gradient| across the seam lines over the mean |gradient| everywhere."""
    g = np.abs(np.diff(out, axis=axis))
    at = np.take(g, [s - 1 for s in seams], axis=axis).mean()
    return at / g.mean()


@pytest.mark.parametrize("seam", ["cosine", "linear", "blur"])
def test_tiled_matches_untiled_without_visible_seams(seam):
    img = smooth_image((150, 170), 1).astype(np.float32) / 4000
    model = ConvSR()
    full = _restore(img, model)
    tiled = _restore(img, model, tile=64, overlap=16, seam=seam)
    assert tiled.shape == full.shape == (600, 680)
    ys, xs = tile_starts(150, 64, 16), tile_starts(170, 64, 16)
    # seam lines in output pixels: every tile border and the middle of every overlap
    lines_y = sorted({v for a, b in zip(ys, ys[1:]) for v in (b * 4, (a + 64) * 4, (b + a + 64) * 2)})
    lines_x = sorted({v for a, b in zip(xs, xs[1:]) for v in (b * 4, (a + 64) * 4, (b + a + 64) * 2)})
    away = np.ones(full.shape, bool)
    for v in lines_y:
        away[max(0, v - 8):v + 8] = False
    for v in lines_x:
        away[:, max(0, v - 8):v + 8] = False
    diff = np.abs(tiled - full)
    assert diff[away].max() < (1e-5 if seam == "blur" else 5e-3)
    assert diff.max() < 0.05
    assert _seam_ratio(tiled, lines_y, 0) < 1.3 and _seam_ratio(tiled, lines_x, 1) < 1.3


def test_seam_check_would_catch_unblended_tiles():
    """The seam measure is sensitive: abutting tiles with no overlap show their borders."""
    img = smooth_image((128, 128), 2).astype(np.float32) / 4000
    hard = _restore(img, ConvSR(), tile=64, overlap=0, seam="linear")
    assert _seam_ratio(hard, [256], 0) > 1.5 or _seam_ratio(hard, [256], 1) > 1.5


def test_output_metadata_dtype_and_pixel_size(tmp_path):
    src_path = write_stack(tmp_path / "img.tif", np.stack([smooth_image((40, 36), s) for s in range(3)]), "ZYX", 0.2)
    for dtype in ("float32", "uint16", "uint8"):
        dest = tmp_path / f"out_{dtype}.tif"
        with open_source(src_path) as src:
            restore_file(src, dest, Predictor(ConvSR(), 4, multiple=1), RestoreSpec(dtype=dtype, tile=16, overlap=4))
        with tifffile.TiffFile(dest) as t:
            assert t.is_imagej and t.series[0].axes == "ZYX" and t.series[0].shape == (3, 160, 144)
            assert t.series[0].dtype == np.dtype(dtype)
            assert t.imagej_metadata["unit"] == "um"
        with open_source(dest) if dtype != "float32" else open_source(src_path) as s:
            if dtype != "float32":
                assert s.pixel_size == pytest.approx(0.05, rel=1e-4) and s.nz == 3
    assert not list(tmp_path.glob(".*tmp"))


def test_failed_write_leaves_no_partial_file(tmp_path):
    dest = tmp_path / "out.tif"
    dest_old = tmp_path / "keep.tif"
    tifffile.imwrite(dest_old, np.ones((4, 4), np.uint8))

    def pages():
        def bands():
            yield np.zeros((8, 16), np.float32)
            raise PSSRError("movie.tif: cannot read frame 1")
        yield bands()

    for target in (dest, dest_old):
        with pytest.raises(PSSRError):
            write_tif_stream(target, pages(), (16, 16), "YX", "uint8", strip_rows=8)
    assert not dest.exists() and tifffile.imread(dest_old).sum() == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tif"]


MEMORY_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, tifffile
    sys.path.insert(0, sys.argv[3])
    import utils
    from utils.restore import Predictor, RestoreSpec, Upsampler, restore_file
    from utils.sources import open_source

    def peak_rss():  # VmHWM restarts at exec; ru_maxrss would carry pytest's peak over
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    def restore(path, dest):
        with open_source(path) as src:
            restore_file(src, dest, Predictor(Upsampler(4), 4, multiple=1), RestoreSpec(tile=128, overlap=8))

    src_path, short_path, dest = sys.argv[1], sys.argv[4], sys.argv[2]
    restore(short_path, dest + ".short.tif")  # lazy imports, thread pools and the row buffers: all width-sized
    base = peak_rss()
    restore(src_path, dest)
    print(base, peak_rss())
""")


def test_tiled_memory_bounded_by_tile_row(tmp_path):
    """A 4000x2000 LR frame -> 16000x8000 float32 output (512 MB): once a 300-row frame of the same width has
    been restored (imports, allocator pools and the tile-row buffers are in place: they scale with the width),
    the 13x taller frame raises the peak RSS by far less than its output. (An absolute bound on the first
    restore flaked in CI: what the imports and the allocator add varies from machine to machine.)"""
    ny, nx = 4000, 2000
    rng = np.random.default_rng(0)
    img = np.repeat(np.repeat(rng.integers(0, 255, (ny // 8, nx // 8), dtype=np.uint8), 8, 0), 8, 1)
    src_path, short_path = tmp_path / "big.tif", tmp_path / "short.tif"
    tifffile.imwrite(src_path, img)
    tifffile.imwrite(short_path, img[:300])
    dest = tmp_path / "big_out.tif"
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, src_path, dest, ROOT, short_path],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    base, peak = map(int, r.stdout.split()[-2:])
    out_bytes = 16 * ny * nx * 4
    assert peak - base < out_bytes / 8, f"RSS grew by {(peak - base) / 2**20:.0f} MiB"
    lo, hi = np.percentile(img, (2, 99.99))
    mm = tifffile.memmap(dest, mode="r")
    assert mm.shape == (4 * ny, 4 * nx) and mm.dtype == np.float32
    for y, x in [(0, 0), (5003, 7001), (4 * ny - 1, 4 * nx - 1)]:
        assert abs(float(mm[y, x]) - (float(img[y // 4, x // 4]) - lo) / (hi - lo)) < 0.02


def test_multiframe_window_is_normalized_as_its_training_stack(tmp_path):
    """A bleaching time-lapse: the 5-frame window the network sees at inference holds the values of the
    training stack step 2 cut from the same place (all frames on the centre frame's percentiles), not
    five separately normalized frames."""
    from utils.info import build_info, write_info
    from utils.tiling import DatasetSpec, make_dataset
    movie = np.stack([smooth_image((64, 64), seed=t) // (1 + t) + 5 for t in range(7)]).astype(np.uint16)
    write_stack(tmp_path / "src" / "live" / "train" / "m.tif", movie, "TYX")
    write_stack(tmp_path / "src" / "live" / "valid" / "m.tif", movie, "TYX")
    info = write_info(build_info([tmp_path / "src"]), tmp_path / "m.csv")
    make_dataset(tmp_path / "ds", info, DatasetSpec([32], 3, 1, crap_func=None, n_frames=5, lr_type="t", seed=0))
    tiles = __import__("pandas").read_csv(tmp_path / "ds" / "t_5_m_hr" / "tiles_t_5.csv")
    seen = {}

    def spy(batch):
        seen.setdefault("windows", []).append(batch[0].copy())
        return np.zeros((len(batch), batch.shape[-2] * 4, batch.shape[-1] * 4), np.float32)

    with open_source(tmp_path / "src" / "live" / "train" / "m.tif", live=True) as src:
        restore_file(src, tmp_path / "out.tif", spy, RestoreSpec(4, 5, "t"))
    for _, r in tiles[tiles.dsplit == "train"].iterrows():
        stack = np.load(next((tmp_path / "ds" / "t_5_m_hr").rglob(f"{int(r.id):06d}_*.npy")))
        window = seen["windows"][int(r.t)][:, r.y0:r.y0 + 32, r.x0:r.x0 + 32]
        assert np.abs(window - stack / np.float32(255)).max() <= 0.5 / 255 + 1e-6
        assert window[0].mean() > 1.5 * window[4].mean()  # the bleaching survives normalization
