"""utils.bmz: a small trained model packaged for bioimage.io, validated offline, and its TorchScript with the rdf's
preprocessing reproducing image_gen.py; multi-frame models refused in one line. resnet18 with a stride-8 encoder
(7 MB of weights), 128-px HR tiles, 1 epoch: the module takes well under a minute on 2 cores."""
import importlib
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
import torch

import utils  # noqa: F401
import utils.bmz as bmz
from utils.bmz import STEP, export, tile_side
from utils.errors import PSSRError, run_cli
from utils.model import build_model, load_model, make_meta, save_model

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_train import make_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import image_gen  # noqa: E402
import train  # noqa: E402

DS = "s_1_tiny_new_crap_AG_SP"


def no_network(*args, **kwargs):
    raise AssertionError("bioimageio.spec tried to use the network")


@pytest.fixture(scope="module")
def trained(module_dir):
    """One epoch of the paper's HR-space U-Net (self-attention on) on a tiny data set of 128-px tiles."""
    root = module_dir("bmz")
    make_dataset(root / "datasets", DS, tile=128, n_train=4, n_valid=2)
    train.main(datasetname=DS, data_path=str(root / "datasets"), model_dir=str(root / "models"), save_name="tiny",
               arch="resnet18", bs=4, size=128, tile_sz=128, cycles=1, lr=1e-3, fp32=True, encoder_stride=8)
    return root


@pytest.fixture(scope="module")
def package(trained):
    """Export with every network call failing loudly: validation at export must work offline."""
    out = trained / "tiny.zip"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("request", "get", "head", "stream"):
            mp.setattr(httpx, name, no_network)
        mp.setattr(httpx.Client, "send", no_network)
        export("s_1_tiny_e1", trained / "models", out, data_path=trained / "datasets", authors="A Person,B Person")
    folder = trained / "unzipped"
    zipfile.ZipFile(out).extractall(folder)
    return out, folder


def scale_range_clip(x: np.ndarray, lo_pct: float, hi_pct: float, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io's `scale_range` (per sample over y, x) then `clip` to [0, 1], as the spec defines them."""
    lo, hi = np.percentile(x.astype(np.float64), (lo_pct, hi_pct), axis=(-2, -1), keepdims=True)
    return np.clip((x - lo) / (hi - lo + eps), 0, 1).astype(np.float32)


def test_package_validates_offline(package, trained, monkeypatch):
    import bioimageio.spec as spec
    from bioimageio.spec.model.v0_5 import ModelDescr
    out, folder = package
    monkeypatch.setattr(httpx, "head", no_network)
    monkeypatch.setattr(httpx.Client, "send", no_network)
    descr = spec.load_description(out, perform_io_checks=True)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    assert descr.validation_summary.status == "valid-format"
    assert not [e for d in descr.validation_summary.details for e in d.errors]
    assert descr.format_version.startswith("0.5")
    assert {f.name for f in folder.iterdir()} >= {"rdf.yaml", "weights.pt", "weights_torchscript.pt",
                                                  "test_input.npy", "test_output.npy", "cover.png", "README.md"}
    assert descr.cite[0].doi == "10.1038/s41592-021-01080-z"
    assert [a.name for a in descr.authors] == ["A Person", "B Person"]
    assert DS in descr.description and "new_crap_AG_SP" in descr.description
    # axes: LR y/x in steps of 32, output y/x = input * 4 (scale 1/4), per-image 2/99.99 percentiles then clip
    y_in, y_out = descr.inputs[0].axes[2], descr.outputs[0].axes[2]
    assert (y_in.size.min, y_in.size.step) == (STEP, STEP)
    assert y_out.size.get_size(y_out, y_in, n=1) == 4 * 2 * STEP
    pre = [p for p in descr.inputs[0].preprocessing if p.id != "ensure_dtype"]
    assert [p.id for p in pre] == ["scale_range", "clip"]
    assert (pre[0].kwargs.min_percentile, pre[0].kwargs.max_percentile) == (2.0, 99.99)
    assert list(pre[0].kwargs.axes) == ["y", "x"] and (pre[1].kwargs.min, pre[1].kwargs.max) == (0, 1)
    assert descr.weights.torchscript.parent == "pytorch_state_dict"
    assert descr.config.pssr["datasetname"] == DS  # the model's full metadata travels with it
    # the state-dict entry rebuilds with this repository, strictly
    arch = descr.weights.pytorch_state_dict.architecture
    net = getattr(importlib.import_module(arch.import_from), arch.callable)(**arch.kwargs)
    net.load_state_dict(torch.load(folder / "weights.pt", weights_only=True), strict=True)
    with pytest.raises(PSSRError, match="exists already; pass --force"):
        export("s_1_tiny_e1", trained / "models", out)


def test_torchscript_reproduces_image_gen(package, trained, tmp_path):
    out, folder = package
    raw = np.load(folder / "test_input.npy")
    assert raw.shape == (1, 1, 32, 32) and raw.dtype == np.float32  # the training crop: 128 HR px / 4
    expected = np.load(folder / "test_output.npy")
    # image_gen.py with default options on the test input written as an image (it is one training-size tile)
    src = tmp_path / "src"
    src.mkdir()
    tifffile.imwrite(src / "lr.tif", raw[0, 0].astype(np.uint8))
    image_gen.main(str(src), str(tmp_path / "out"), models="s_1_tiny_e1", model_dir=str(trained / "models"))
    ref = tifffile.imread(tmp_path / "out" / "s_1_tiny_e1" / "lr_s_1_tiny_e1.tif")
    assert ref.shape == (128, 128)
    np.testing.assert_allclose(expected[0, 0], ref, atol=1e-4, rtol=0)
    # the package alone: the rdf's preprocessing in numpy, then the TorchScript
    ts = torch.jit.load(str(folder / "weights_torchscript.pt"))
    with torch.no_grad():
        got = ts(torch.from_numpy(scale_range_clip(raw, 2.0, 99.99))).numpy()
    assert got.shape == (1, 1, 128, 128)
    np.testing.assert_allclose(got[0, 0], ref, atol=1e-4, rtol=0)
    assert np.abs(ref - np.kron(raw[0, 0], np.ones((4, 4)))).max() > 0  # not a trivial output


def test_torchscript_takes_other_sizes(package, trained):
    """The trace holds for any multiple of 32, non-square and batched (the rdf's min + step)."""
    model, _ = load_model("s_1_tiny_e1", trained / "models")
    ts = torch.jit.load(str(package[1] / "weights_torchscript.pt"))
    x = torch.rand(2, 1, 32, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ts(x), model(x)
    assert a.shape == (2, 1, 128, 256)
    assert (a - b).abs().max().item() <= 1e-4


def test_lr_space_model_and_test_image(tmp_path):
    """The lr_space path (pixel-shuffle head + bilinear skip), told the noise level as quick.sh's models are,
    traces too; --test_image gives a centre crop of the training tile size (rounded up to a multiple of 32) and a
    too-small image is refused in one line."""
    meta = make_meta(arch="resnet18", lr_space=True, encoder_stride=8, size=160, tile_sz=160, noise_channel=True)
    model = build_model(meta)
    with torch.no_grad():  # leave bilinear: give the zero-initialized output conv some weight
        model.head[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    save_model(model, meta, "lrs", tmp_path)
    assert tile_side(meta) == 64  # 160 / 4 = 40, rounded up to 64
    img = tmp_path / "scan.tif"
    tifffile.imwrite(img, np.random.default_rng(0).integers(0, 4000, (100, 90)).astype(np.uint16))
    out = export("lrs", tmp_path, tmp_path / "lrs.zip", test_image=img)
    with zipfile.ZipFile(out) as z:
        z.extractall(tmp_path / "pkg")
    raw = np.load(tmp_path / "pkg" / "test_input.npy")
    full = tifffile.imread(img)
    np.testing.assert_array_equal(raw[0, 0], full[18:82, 13:77])
    ts = torch.jit.load(str(tmp_path / "pkg" / "weights_torchscript.pt"))
    with torch.no_grad():
        got = ts(torch.from_numpy(scale_range_clip(raw, 2.0, 99.99))).numpy()
    np.testing.assert_allclose(got, np.load(tmp_path / "pkg" / "test_output.npy"), atol=1e-4, rtol=0)
    tifffile.imwrite(tmp_path / "small.tif", full[:40, :40])
    with pytest.raises(PSSRError, match=r"small.tif: 40x40 px: the test input needs at least 64x64"):
        export("lrs", tmp_path, tmp_path / "small.zip", test_image=tmp_path / "small.tif")
    assert not (tmp_path / "small.zip").exists()


def test_multi_frame_refused_one_line(tmp_path, monkeypatch, capsys):
    """The command line as in the issue; a 5-frame model is refused with one line and exit status 2."""
    meta = make_meta(arch="resnet18", n_frames=5, lr_type="t", encoder_stride=8)
    save_model(build_model(meta), meta, "t5", tmp_path)
    monkeypatch.setattr(sys, "argv", ["bmz", "t5", "--model_dir", str(tmp_path), "--out", str(tmp_path / "t5.zip")])
    with pytest.raises(SystemExit) as e:
        run_cli(bmz.main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "t5.json: 5-frame models cannot be exported" in err
    assert not (tmp_path / "t5.zip").exists()
