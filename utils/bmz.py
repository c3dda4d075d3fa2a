"""Package a trained PSSR model for the BioImage Model Zoo (bioimage.io model format 0.5).

    python -m utils.bmz MODEL [--model_dir models] [--out MODEL.zip] [--test_image LR.tif]
                        [--data_path datasets] [--authors 'Ada Lovelace,Alan Turing'] [--license BSD-3-Clause]
                        [--force]

The zip (`rdf.yaml`, TorchScript and state-dict weights, a test input/output pair, a cover, a README) lets Fiji
(deepImageJ), ilastik and napari run the model without this repository. It is built to reproduce `image_gen.py`
with default options on one tile:
- preprocessing: `scale_range` at the model's percentiles (per image, over y and x) then `clip` to [0, 1] is
  exactly `utils.norm.normalize` at `frame_percentiles` (up to the spec's eps of 1e-6 added to the range);
- the TorchScript is `PSSRNet` itself (bilinear residual and lr_space head included), traced: tile sides must
  be multiples of 32, the size `Predictor` pads every tile to, so no padding is needed and the traced graph is
  valid (checked at export on a second size);
- output: float32 on the normalized scale, not clipped, as image_gen's default `--dtype float32`.
Multi-frame models are refused (see `check_single_frame`). The `.pkl` is never opened: weights come from
`.pth` + `.json` through `utils.model.load_model` (weights_only).
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .errors import PSSRError, fail, run_cli, warn
from .fileio import atomic_path, save_tif
from .loss import loss_name
from .norm import normalize
from .sources import find_images, open_source

__all__ = ["STEP", "PAPER", "PAPER_DOI", "check_single_frame", "tile_side", "find_test_image", "read_test_crop",
           "run_image_gen_tile", "trace_model", "export"]

# Predictor pads LR tiles to a multiple of 32 (the encoder halves the size five times); at such sizes the traced
# graph takes no size-dependent branch (fastai's UnetBlock resizes only on a mismatch), so any multiple works.
STEP = 32
PAPER = ("Fang, L. et al. Deep learning-based point-scanning super-resolution imaging. "
         "Nat Methods 18, 406-416 (2021)")
PAPER_DOI = "10.1038/s41592-021-01080-z"
TOLERANCE = 1e-4  # traced vs eager, at export


def check_single_frame(meta: dict, path: Path) -> None:
    """Refuse multi-frame models: image_gen normalizes all frames of a window with the centre frame's
    percentiles, which bioimage.io preprocessing cannot express (scale_range normalizes each frame, or all
    frames jointly), so the package would not reproduce image_gen."""
    n = int(meta["n_frames"])
    if n != 1:
        fail(path, f"{n}-frame models cannot be exported: image_gen normalizes the window with its centre frame's "
                   f"percentiles, which bioimage.io preprocessing cannot express; export a single-frame model")


def tile_side(meta: dict) -> int:
    """LR side of the test tile: the training crop (image_gen's default tile) rounded up to a multiple of STEP."""
    side = max(1, int(meta["size"]) // int(meta["scale"]))
    return -(-side // STEP) * STEP


def find_test_image(meta: dict, data_path: Path) -> Path:
    """First LR validation tile of the model's step-2 data set: a real input of the kind the model was made for."""
    ds = Path(data_path) / str(meta.get("datasetname"))
    found = [p for p in find_images(ds, recursive=True)
             if "valid" in p.parts and any(part.startswith("lr") for part in p.relative_to(ds).parts)]
    if not found:
        fail(ds, "no LR validation tiles to make the test pair from; pass --test_image LR_IMAGE (.tif/.czi)")
    return found[0]


def read_test_crop(path: Path, side: int) -> np.ndarray:
    """Centre `side`² crop of the middle frame (channel 0) of `path`, raw values as float32.

    Only the crop is read, so a huge scan costs no memory."""
    with open_source(path) as src:
        if src.ny < side or src.nx < side:
            fail(path, f"{src.ny}x{src.nx} px: the test input needs at least {side}x{side} LR px "
                       f"(the model's training crop, a multiple of {STEP})")
        box = ((src.ny - side) // 2, (src.nx - side) // 2, side, side)
        return src.read(0, src.nz // 2, src.nt // 2, box=box).astype(np.float32)


@torch.inference_mode()
def run_image_gen_tile(model: torch.nn.Module, meta: dict, raw: np.ndarray) -> tuple:
    """(normalized input, output) of image_gen's default path on an image that is one tile: the frame's own
    percentiles, `normalize` (clipped), `Predictor` without TTA or bf16."""
    from .restore import Predictor
    lo, hi = np.percentile(raw.astype(np.float64), (meta["norm"]["lo"], meta["norm"]["hi"]))
    x = normalize(raw, float(lo), float(hi))[None, None]
    y = Predictor(model, int(meta["scale"]))(x)
    return x, y[:, None]


def trace_model(model: torch.nn.Module, x: np.ndarray) -> torch.jit.ScriptModule:
    """TorchScript of the network as Predictor runs it, checked against eager at `x`'s size and at another one.

    Tracing, not scripting: fastai's U-Net hooks do not script. The check guards against a shape baked into the
    trace (it would fail or differ at the second size)."""
    model = model.cpu().eval()
    t = torch.from_numpy(x)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        traced = torch.jit.trace(model, t, check_trace=False)
        side = x.shape[-1]  # a second size that differs in y and in x, kept small (eager runs are costly)
        g = torch.Generator().manual_seed(0)
        other = torch.rand(1, 1, STEP if side > STEP else 2 * STEP, side + STEP, generator=g)
        for inp in (t, other):
            err = (traced(inp) - model(inp)).abs().max().item()
            if not err <= TOLERANCE:
                fail(None, f"traced model differs from the eager one by {err:.2g} on a {tuple(inp.shape)} input")
    return traced


def write_cover(dest: Path, x: np.ndarray, y: np.ndarray, scale: int) -> Path:
    """2:1 cover: the normalized LR input (nearest-neighbour enlarged) next to the restoration."""
    from imageio.v3 import imwrite
    lr = np.kron(x[0, 0], np.ones((scale, scale), np.float32))
    img = np.concatenate([lr, np.clip(y[0, 0], 0, 1)], axis=1)
    imwrite(dest, np.round(img * 255).astype(np.uint8))
    return dest


def modality(meta: dict) -> str:
    """bioimage.io modality tag from the crappifier: the EM ones are named em_*."""
    em = str(meta.get("crap_func") or "").startswith("em")
    return "electron-microscopy" if em else "fluorescence-light-microscopy"


def description(meta: dict) -> str:
    """The rdf's summary: what the model does, what it was trained on, how to feed it (<= 512 characters)."""
    s = int(meta["scale"])
    return (f"PSSR (Fang et al. 2021) {meta['arch']} U-Net: restores a {s}x undersampled, noisy point scan at "
            f"{s}x finer pixels. Trained on data set {meta.get('datasetname')} crappified with "
            f"{meta.get('crap_func')}, {meta.get('epochs')} epochs. Input: one grey frame, normalized to its "
            f"{meta['norm']['lo']}/{meta['norm']['hi']} percentiles, clipped to [0,1]; output float32 on that "
            f"scale. Tiles: multiples of {STEP} px, best {tile_side(meta)} px (training crop).")[:1024]


def readme(name: str, meta: dict) -> str:
    """Package documentation, with the '# Validation' section the spec asks for."""
    s, side = int(meta["scale"]), tile_side(meta)
    crop = int(meta["size"]) // s
    net = "U-Net on the LR pixels, pixel-shuffle head" if meta["lr_space"] else f"bilinear x{s}, then the U-Net"
    return f"""# PSSR model {name}

Point-scanning super-resolution (PSSR): a ResNet-based U-Net ({meta['arch']}; {net}; output added to the
bilinear upsampling of the input) that restores a {s}x undersampled, noisy point scan at {s}x finer pixels.
Method: {PAPER}, doi:{PAPER_DOI}.

## Training
Data set `{meta.get('datasetname')}`, crappifier `{meta.get('crap_func')}` (the model learnt to undo this
degradation; images degraded otherwise may restore worse), {meta.get('epochs')} epochs, training crop
{meta['size']} HR px ({crop} LR px), loss {loss_name(meta)}. All training metadata is in `config.pssr`
of `rdf.yaml`.

## Use
- Input: one grey frame, raw intensities. Preprocessing: `scale_range` to the {meta['norm']['lo']} and
  {meta['norm']['hi']} percentiles of the whole image, then `clip` to [0, 1], as `image_gen.py` does.
- Output: float32 on the normalized scale (about [0, 1], not clipped), {s}x the input size; pixel size / {s}.
- Tiles: sides must be multiples of {STEP} LR px; the model was trained on {crop}-px LR crops, so tiles of
  {side} px suit it best (`image_gen.py` uses {crop}-px tiles, padded to {side}, and cross-fades their overlap;
  other tools tile differently, and percentiles computed per tile instead of per image change the result).
- Multi-frame PSSR models are not exported (their normalization cannot be expressed in this format).

## Validation
The test input is a centre crop of a real LR image and the test output its restoration by the PSSR code
(`image_gen.py`'s path: the image's own percentiles, no test-time augmentation, float32). The TorchScript weights
reproduce it within {TOLERANCE:g} and were checked on a second tile size. Measure PSNR/SSIM against ground truth
on your own held-out images (`metric_gen.py` in the PSSR repository) before trusting the model on your data.
"""


def describe(name: str, meta: dict, files: dict, authors: Sequence[str], license: str):
    """bioimage.io 0.5 ModelDescr for the staged `files` (absolute paths, see `stage`)."""
    from bioimageio.spec.model import v0_5 as bmz
    s = int(meta["scale"])
    space = dict(size=bmz.ParameterizedSize(min=STEP, step=STEP))
    inp = bmz.InputTensorDescr(
        id=bmz.TensorId("input"), description="raw LR frame (one grey channel)",
        axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier("lr")]),
              bmz.SpaceInputAxis(id=bmz.AxisId("y"), **space), bmz.SpaceInputAxis(id=bmz.AxisId("x"), **space)],
        test_tensor=bmz.FileDescr(source=files["input"]), sample_tensor=bmz.FileDescr(source=files["sample_in"]),
        data=bmz.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            bmz.ScaleRangeDescr(kwargs=bmz.ScaleRangeKwargs(
                axes=[bmz.AxisId("y"), bmz.AxisId("x")], min_percentile=float(meta["norm"]["lo"]),
                max_percentile=float(meta["norm"]["hi"]))),
            bmz.ClipDescr(kwargs=bmz.ClipKwargs(min=0.0, max=1.0))])
    ref = {a: bmz.SizeReference(tensor_id=bmz.TensorId("input"), axis_id=bmz.AxisId(a)) for a in "yx"}
    out = bmz.OutputTensorDescr(
        id=bmz.TensorId("output"), description=f"restored frame, {s}x finer pixels, normalized scale",
        axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier("restored")]),
              *(bmz.SpaceOutputAxis(id=bmz.AxisId(a), size=ref[a], scale=1 / s) for a in "yx")],
        test_tensor=bmz.FileDescr(source=files["output"]), sample_tensor=bmz.FileDescr(source=files["sample_out"]),
        data=bmz.IntervalOrRatioDataDescr(type="float32"))
    version = torch.__version__.split("+")[0]
    weights = bmz.WeightsDescr(
        pytorch_state_dict=bmz.PytorchStateDictWeightsDescr(
            source=files["pth"], pytorch_version=bmz.Version(version),
            architecture=bmz.ArchitectureFromLibraryDescr(
                import_from="utils.model", callable=bmz.Identifier("build_model"), kwargs={"meta": meta}),
            comment="needs the PSSR repository (utils.model) and fastai importable; the TorchScript does not"),
        torchscript=bmz.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=bmz.Version(version), parent="pytorch_state_dict",
            comment=f"torch.jit.trace of PSSRNet; tile sides must be multiples of {STEP}"))
    config = bmz.Config(
        bioimageio=bmz.BioimageioConfig(
            architecture_type="ResNet U-Net", modality=modality(meta), task="super-resolution",
            training=bmz.TrainingDetails(training_epochs=meta.get("epochs"), loss_function=loss_name(meta))),
        pssr=meta)
    return bmz.ModelDescr(
        name=f"PSSR {name}", description=description(meta),
        authors=[bmz.Author(name=a) for a in authors],
        cite=[bmz.CiteEntry(text=PAPER, doi=bmz.Doi(PAPER_DOI))],
        license=bmz.LicenseId(license), documentation=bmz.FileDescr(source=files["readme"]),
        covers=[bmz.FileDescr(source=files["cover"])],
        tags=["super-resolution", "denoising", "pssr", "unet", "pytorch", "2d", modality(meta)],
        inputs=[inp], outputs=[out], weights=weights, config=config)


def stage(model: torch.nn.Module, meta: dict, name: str, pth: Path, raw: np.ndarray, d: Path) -> dict:
    """Write every file of the package into folder `d`; returns their paths."""
    x, y = run_image_gen_tile(model, meta, raw)
    files = {k: d / f for k, f in dict(pth="weights.pt", torchscript="weights_torchscript.pt",
                                       input="test_input.npy", output="test_output.npy", cover="cover.png",
                                       sample_in="sample_input.tif", sample_out="sample_output.tif",
                                       readme="README.md").items()}
    shutil.copyfile(pth, files["pth"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": still what consumers load
        torch.jit.save(trace_model(model, x), str(files["torchscript"]))
    np.save(files["input"], raw[None, None].astype(np.float32))
    np.save(files["output"], y.astype(np.float32))
    save_tif(files["sample_in"], raw.astype(np.float32))  # the same pair, as images a person can open
    save_tif(files["sample_out"], y[0, 0].astype(np.float32))
    write_cover(files["cover"], x, y, int(meta["scale"]))
    files["readme"].write_text(readme(name, meta))
    return files


def one_line(e: Exception) -> str:
    """pydantic errors span many lines; the first few hundred characters say which field failed."""
    return " ".join(str(e).split())[:300]


def describe_checked(name: str, meta: dict, files: dict, authors: Sequence[str], license: str, out: Path):
    """`describe` with every file check on (hashes, test tensors against the axes); one-line error."""
    import bioimageio.spec as spec
    with spec.ValidationContext(perform_io_checks=True, log_warnings=False, raise_errors=False):
        try:
            return describe(name, meta, files, authors, license)
        except Exception as e:
            raise PSSRError(f"{out}: not a valid bioimage.io model ({one_line(e)})") from None


def zip_validated(descr, folder: Path, out: Path) -> Path:
    """Zip the package with bioimageio.spec, which reloads and validates the zip (file checks on) before
    returning; nothing in the rdf is a URL, so no check goes to the network."""
    import bioimageio.spec as spec
    folder.mkdir()
    zipped = folder / "package.zip"
    with spec.ValidationContext(perform_io_checks=True, log_warnings=False, raise_errors=False), \
            warnings.catch_warnings():
        # its cache pre-fetch cannot resolve the zip's relative paths and says so; validation itself reads them
        warnings.filterwarnings("ignore", message="Found mapping with 'source'")
        try:
            spec.save_bioimageio_package(descr, output_path=zipped)
        except ValueError as e:
            raise PSSRError(f"{out}: the package failed validation ({one_line(e)})") from None
    return zipped


def author_names(authors: Union[None, str, Sequence[str]]) -> list:
    """'A B,C D', ['A B', 'C D'] (fire turns 'a,b' into a tuple) -> ['A B', 'C D']."""
    items = [authors] if isinstance(authors, str) else list(authors or [])
    return [n.strip() for item in items for n in str(item).split(",") if n.strip()]


def export(name: str, model_dir: Union[str, Path] = "models", out: Optional[Union[str, Path]] = None,
           test_image: Optional[Union[str, Path]] = None, data_path: Union[str, Path] = "datasets",
           authors: Union[None, str, Sequence[str]] = None, license: str = "BSD-3-Clause",
           force: bool = False) -> Path:
    """Write `out` (default `{model_dir}/{name}.bioimageio.zip`), validated by bioimageio.spec with its file
    checks on and no network use (see `zip_validated`)."""
    from .model import load_model, model_paths, read_meta
    model_dir = Path(model_dir)
    meta = read_meta(name, model_dir)
    check_single_frame(meta, model_paths(name, model_dir)["json"])
    out = Path(out) if out is not None else model_dir / f"{name}.bioimageio.zip"
    if out.suffix != ".zip":
        fail(out, "--out must end in .zip")
    if out.exists() and not force:
        fail(out, "exists already; pass --force to replace it")
    img = Path(test_image) if test_image is not None else find_test_image(meta, Path(data_path))
    raw = read_test_crop(img, tile_side(meta))
    model, meta = load_model(name, model_dir)
    names = author_names(authors)
    if not names:
        warn(out, "no --authors given: the rdf lists none (bioimage.io uploads need them)")
    with tempfile.TemporaryDirectory() as tmp:
        files = stage(model, meta, name, model_paths(name, model_dir)["pth"], raw, Path(tmp))
        zipped = zip_validated(describe_checked(name, meta, files, names, license, out), Path(tmp) / "zip", out)
        with atomic_path(out) as dest:
            shutil.copyfile(zipped, dest)
    print(f"wrote {out} (bioimage.io model format 0.5, validated; test pair from {img})")
    return out


def main(model: str, model_dir: str = "models", out: Optional[str] = None, test_image: Optional[str] = None,
         data_path: str = "datasets", authors: Optional[str] = None, license: str = "BSD-3-Clause",
         force: bool = False) -> None:
    """Package MODEL (`{model_dir}/{MODEL}.pth` + `.json`) as a bioimage.io model zip.

    test_image: LR image (.tif/.czi) whose centre crop of the training tile size becomes the test input
    (default: the first LR validation tile of the model's data set under data_path).
    authors: comma-separated names of whoever trained the model. force: replace an existing `out`."""
    export(model, model_dir, out, test_image, data_path, authors, license, force)


if __name__ == "__main__":
    run_cli(main)
