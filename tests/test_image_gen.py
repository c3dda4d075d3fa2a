"""image_gen.py end to end: original command line, output tree and metadata, bad inputs."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import utils  # noqa: F401
from utils.errors import PSSRError
from utils.model import build_model, make_meta, save_model

sys.path.insert(0, str(Path(__file__).parent))
from restore_helpers import smooth_image, write_stack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import image_gen  # noqa: E402


@pytest.fixture(scope="module")
def models(module_dir) -> Path:
    """Untrained small models in the step-3 format: single-frame and 5-frame (time)."""
    d = module_dir("models")
    for name, kw in (("toy", {}), ("toy5", dict(n_frames=5, lr_type="t"))):
        meta = make_meta(arch="resnet18", **kw)
        save_model(build_model(meta), meta, name, d)
    return d


@pytest.fixture()
def src(tmp_path) -> Path:
    s = tmp_path / "src"
    write_stack(s / "img.tif", smooth_image((32, 40)), "YX", 0.02)  # 40: padded to 64 inside
    write_stack(s / "live" / "movie.tif", np.stack([smooth_image((32, 32), i) for i in range(3)]), "TYX", 0.1)
    return s


def test_original_command_line_tree_metadata_and_corrupt_file(models, src, tmp_path):
    (src / "corrupt.tif").write_bytes(b"II*\x00 definitely not a tiff" * 10)
    (src / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "image_gen.py", src, out, "--models", "toy", "toy5", "--model_dir", models,
                        "--baselines", "--dtype", "uint16"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stderr.splitlines() if l.startswith("warning: skipping")]
    assert any("corrupt.tif" in l for l in warnings) and any("empty.tif" in l for l in warnings)
    assert "skipped 8 (2 input file(s)" in r.stdout  # 2 bad files x 4 processors, counted
    for name in ("toy", "toy5", "LR-bilinear", "LR-bicubic"):
        img, movie = out / name / f"img_{name}.tif", out / "live" / name / f"movie_{name}.tif"
        with tifffile.TiffFile(img) as t:
            assert t.series[0].shape == (128, 160) and t.series[0].dtype == np.uint16 and t.is_imagej
            assert t.pages[0].tags["XResolution"].value[1] / t.pages[0].tags["XResolution"].value[0] == \
                pytest.approx(0.005, rel=1e-4)
        with tifffile.TiffFile(movie) as t:  # every frame kept, time axis labelled for Fiji/napari
            assert t.series[0].axes == "TYX" and t.series[0].shape == (3, 128, 128)
    assert not list(out.rglob(".*.tmp"))


def test_model_not_found(models, src, tmp_path):
    with pytest.raises(PSSRError, match="model 'nope' not found.*toy"):
        image_gen.main(src, tmp_path / "out", models="nope", model_dir=models)


def test_empty_src_dir(models, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PSSRError, match="empty: SRC_DIR holds no"):
        image_gen.main(tmp_path / "empty", tmp_path / "out", models="toy", model_dir=models)


def test_out_dir_needs_force_and_resume_keeps(models, src, tmp_path, capsys):
    out = tmp_path / "out"
    image_gen.main(src, out, baselines=True)
    first = out / "LR-bilinear" / "img_LR-bilinear.tif"
    stamp = first.stat().st_mtime_ns
    with pytest.raises(PSSRError, match="OUT_DIR exists already; pass --force"):
        image_gen.main(src, out, baselines=True)
    image_gen.main(src, out, baselines=True, resume=True)
    assert first.stat().st_mtime_ns == stamp and "kept 4 existing" in capsys.readouterr().out
    image_gen.main(src, out, baselines=True, force=True, dtype="uint8")
    assert tifffile.imread(first).dtype == np.uint8


def test_incompatible_frames_and_channels(models, tmp_path, capsys):
    s = tmp_path / "src"
    write_stack(s / "zstack.tif", np.stack([smooth_image((32, 32), i) for i in range(4)]), "ZYX")
    with pytest.raises(PSSRError, match="no file could be restored"):
        image_gen.main(s, tmp_path / "o1", models="toy5", model_dir=models)
    assert "needs 5 frames along time but the file has 1 there and 4 z-slices" in capsys.readouterr().err
    with pytest.raises(PSSRError, match="no file could be restored"):
        image_gen.main(s, tmp_path / "o2", models="toy", model_dir=models, channel=1)
    assert "1 channel(s); channel 1 does not exist" in capsys.readouterr().err


def test_cli_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "image_gen.py", tmp_path / "missing", tmp_path / "out", "--baselines"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "missing: SRC_DIR is not a folder" in r.stderr


@pytest.mark.parametrize("opts, tile, overlap", [({}, 32, 8), ({"whole": True}, None, 16),
                                                 ({"tile_sz": 48}, 48, 12), ({"use_tiles": False}, None, 16)])
def test_default_tiles_are_the_models_training_crop(models, src, tmp_path, monkeypatch, opts, tile, overlap):
    """The toy model was trained (its .json says) on 128-px HR crops: 32-px LR tiles by default."""
    seen = []
    monkeypatch.setattr(image_gen, "restore_file", lambda src, dest, predict, spec, **k: seen.append(spec))
    image_gen.main(str(src), str(tmp_path / "out"), models="toy", model_dir=str(models), **opts)
    assert seen and all((s.tile, s.overlap, s.seam) == (tile, overlap, "blur") for s in seen)  # the paper's seams


@pytest.mark.parametrize("native", [True, False])
def test_fast_warns_where_bf16_is_emulated(models, src, tmp_path, monkeypatch, capsys, native):
    """--fast where the CPU has no bf16 instructions: one warning (emulated bf16 is slower than fp32)."""
    import utils.speed
    monkeypatch.setattr(utils.speed, "native_bf16", lambda: native)
    image_gen.main(str(src), str(tmp_path / "out"), models="toy", model_dir=str(models), fast=True)
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: --fast")]
    assert len(warned) == (0 if native else 1) and all("slower than fp32" in ln for ln in warned)


# --------------------------------------------------------------------------- pixel size (issue 8)

@pytest.fixture(scope="module")
def model_2nm(module_dir) -> Path:
    """A fast toy model whose .json records its training HR pixel size, 2 nm (so its input is 8 nm)."""
    d = module_dir("models_px")
    meta = make_meta(arch="resnet18", lr_space=True, encoder_stride=16, hr_pixel_size=0.002)
    save_model(build_model(meta), meta, "px", d)
    return d


@pytest.mark.parametrize("px", [0.016, 0.010, 0.004])  # x2 and x1.25 up (bilinear), x0.5 down (antialiased)
def test_resampled_source_reads_bands_as_the_whole_frame(tmp_path, px):
    import torch
    import torch.nn.functional as F
    from utils.resample import resample_source
    from utils.sources import open_source
    img = smooth_image((45, 38))
    with open_source(write_stack(tmp_path / "a.tif", img, "YX", px)) as s:
        r = resample_source(s, 0.008)
        assert (r.ny, r.nx) == (round(45 * px / 0.008), round(38 * px / 0.008))
        assert r.pixel_size == pytest.approx(px * 38 / r.nx)
        whole = r.read()
        cuts = [0, 7, 8, r.ny * 2 // 3, r.ny]
        bands = np.concatenate([r.read(box=(a, 0, b - a, r.nx)) for a, b in zip(cuts, cuts[1:])])
        assert np.array_equal(bands, whole) and np.array_equal(r.read(box=(3, 5, 9, 11)), whole[3:12, 5:16])
        ref = F.interpolate(torch.from_numpy(img.astype(np.float32))[None, None], size=(r.ny, r.nx),
                            mode="bilinear", align_corners=False, antialias=px < 0.008)[0, 0].numpy()
        assert np.abs(whole - ref).max() < 1e-5 * img.max()  # torch: bilinear, antialiased bilinear
        assert np.array_equal(r.sample(), s.sample())  # statistics from the file's own pixels


def test_input_at_twice_the_models_pixel_size_is_upsampled_first(model_2nm, tmp_path, capsys):
    """16 nm pixels for a model trained on 8 nm inputs: restored as the bilinear x2 upsampling would be,
    into 2 nm output pixels, recorded in the TIFF and the OME-Zarr."""
    import json
    import torch
    import torch.nn.functional as F
    from utils.model import load_model
    from utils.norm import normalize
    from utils.restore import Predictor
    img = smooth_image((32, 40))
    write_stack(tmp_path / "src" / "em.tif", img, "YX", 0.016)
    image_gen.main(tmp_path / "src", tmp_path / "out", models="px", model_dir=model_2nm, whole=True)
    assert "em.tif: pixel size 16 nm -> 8 nm, the model's training input (32x40 -> 64x80 px, bilinear)" \
        in capsys.readouterr().out
    out = tmp_path / "out" / "px" / "em_px.tif"
    with tifffile.TiffFile(out) as t:
        got = t.asarray()
        res = t.pages[0].tags["XResolution"].value
        note = json.loads(t.imagej_metadata["Info"].removeprefix("pssr: "))
    assert got.shape == (256, 320) and res[1] / res[0] == pytest.approx(0.002, rel=1e-4)
    assert note["source_pixel_size_um"] == pytest.approx(0.016) and note["resampled_shape_yx"] == [64, 80]
    model, meta = load_model("px", model_2nm)
    lo, hi = np.percentile(img, (meta["norm"]["lo"], meta["norm"]["hi"]))
    up = F.interpolate(torch.from_numpy(img.astype(np.float32))[None, None], scale_factor=2, mode="bilinear",
                       align_corners=False)[0].numpy()
    expected = Predictor(model, 4)(normalize(up, lo, hi)[None])[0]
    assert np.abs(got - expected).max() < 1e-4
    image_gen.main(tmp_path / "src", tmp_path / "out_z", models="px", model_dir=model_2nm, whole=True,
                   out_format="ome-zarr")
    import zarr
    attrs = zarr.open_group(str(tmp_path / "out_z" / "px" / "em_px.ome.zarr"), mode="r").attrs
    assert attrs["pssr"]["resampled_pixel_size_um"] == pytest.approx(0.008)
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([0.002, 0.002])


def test_pixel_size_option_overrides_the_file_and_unknown_sizes_do_nothing(model_2nm, tmp_path, capsys):
    write_stack(tmp_path / "src" / "em.tif", smooth_image((32, 40)), "YX", 0.008)
    image_gen.main(tmp_path / "src", tmp_path / "a", models="px", model_dir=model_2nm, whole=True,
                   pixel_size=0.016, baselines=True)
    assert capsys.readouterr().out.count("pixel size 16 nm -> 8 nm") == 3  # the model and both baselines
    for name in ("px", "LR-bilinear"):
        with tifffile.TiffFile(tmp_path / "a" / name / f"em_{name}.tif") as t:
            assert t.series[0].shape == (256, 320)
    image_gen.main(tmp_path / "src", tmp_path / "b", baselines=True, pixel_size=0.016)  # no model: no size
    assert "pixel size" not in capsys.readouterr().out
    with tifffile.TiffFile(tmp_path / "b" / "LR-bilinear" / "em_LR-bilinear.tif") as t:
        assert t.series[0].shape == (128, 160) and "Info" not in (t.imagej_metadata or {})
        res = t.pages[0].tags["XResolution"].value
        assert res[1] / res[0] == pytest.approx(0.004, rel=1e-4)  # the option's 16 nm / 4
    with pytest.raises(PSSRError, match="--pixel_size -1"):
        image_gen.main(tmp_path / "src", tmp_path / "c", baselines=True, pixel_size=-1)
    with pytest.raises(PSSRError, match="--out_format png: choose one of tif, ome-zarr"):
        image_gen.main(tmp_path / "src", tmp_path / "c", baselines=True, out_format="png")


# --------------------------------------------------------------------------- LR unlike the training LR

def test_lr_smoother_or_noisier_than_the_training_lr_is_said_once(tmp_path, capsys):
    """LR smoothed along x (a detector too slow for the scan) below 0.8x the fast-axis ratio of the model's
    training LR, or noisier than 1.4x its noise level (its .json's lr_fast_axis_ratio, lr_noise_level): one
    warning per model and kind at the end, naming a file and the count; so is LR cleaner than the training LR's
    cleanest for a model that gained nothing on noise-free LR; LR like the training LR, and a model that recorded
    none of these, say nothing."""
    from scipy.ndimage import gaussian_filter1d
    from utils.lrstats import fast_axis_ratio, noise_level
    rng = np.random.default_rng(0)
    src, imgs = tmp_path / "src", {}
    for i, (name, sigma) in enumerate((("a_white", 0.08), ("b_lined", 0.08), ("c_lined", 0.08), ("d_noisy", 0.3))):
        lr = smooth_image((64, 64), i).astype(np.float32) / 4000 + rng.normal(0, sigma, (64, 64))
        if "lined" in name:
            lr = gaussian_filter1d(lr, 1.0, axis=1)
        imgs[name] = (np.clip(lr, 0, 1) * 255).astype(np.uint8)
        write_stack(src / f"{name}.tif", imgs[name], "YX")
    ratio, noise = fast_axis_ratio(imgs["a_white"]), noise_level(imgs["a_white"])
    assert fast_axis_ratio(imgs["b_lined"]) < 0.5 * ratio and noise_level(imgs["d_noisy"]) > 1.5 * noise
    models = tmp_path / "models"
    # "weak" gained nothing on noise-free validation LR, and all four inputs are cleaner than its cleanest
    weak = {"lr_noise_level_min": 2 * noise_level(imgs["d_noisy"]), "clean_gain_db": 0.0}
    for name, extra in (("ref", {"lr_fast_axis_ratio": ratio, "lr_noise_level": noise}), ("old", {}), ("weak", weak)):
        meta = make_meta(arch="resnet18", lr_space=True, encoder_stride=16, **extra)
        save_model(build_model(meta), meta, name, models)
    image_gen.main(str(src), str(tmp_path / "out"), models=["ref", "old", "weak"], model_dir=str(models))
    warned = sorted(ln for ln in capsys.readouterr().err.splitlines() if "like this one" in ln)
    assert len(warned) == 3 and all("LR_DIR=" in ln for ln in warned)
    assert "a_white.tif: weak: 4 input file(s) like this one are cleaner than any" in warned[0]
    assert "gained +0.00 dB over bilinear in training" in warned[0]
    assert "b_lined.tif: ref: 2 input file(s) like this one are smoother along x" in warned[1]
    assert f"vs {ratio:.3g})" in warned[1]
    assert "d_noisy.tif: ref: 1 input file(s) like this one are noisier" in warned[2]
