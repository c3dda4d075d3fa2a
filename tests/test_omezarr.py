"""OME-Zarr in and out: image_gen --out_format ome-zarr (axes, pixel sizes, pyramid, values = TIFF),
frames written by separate writers (as ranks do), and .zarr sources through steps 1, 2 and 4."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

import utils  # noqa: F401
from utils import omezarr
from utils.errors import PSSRError
from utils.model import build_model, make_meta, save_model
from utils.norm import normalize, to_uint8
from utils.omezarr import OmeZarrWriter, write_omezarr_stream
from utils.sources import find_images, open_source

sys.path.insert(0, str(Path(__file__).parent))
from restore_helpers import smooth_image, write_stack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import image_gen  # noqa: E402


def read_ngff(path: Path):
    """(axes names, [level arrays], [level scale transforms]) through the ome-zarr reader, as napari reads it."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    node = next(iter(Reader(parse_url(str(path)))()))
    axes = [a["name"] for a in node.metadata["axes"]]
    units = {a["name"]: a.get("unit") for a in node.metadata["axes"]}
    scales = [next(t["scale"] for t in tr if t["type"] == "scale") for tr in node.metadata["coordinateTransformations"]]
    return axes, units, [np.asarray(d) for d in node.data], scales


@pytest.fixture(scope="module")
def toy_model(module_dir) -> Path:
    d = module_dir("models")
    meta = make_meta(arch="resnet18", lr_space=True, encoder_stride=16)  # the U-Net on LR pixels: fast on CPU
    save_model(build_model(meta), meta, "toy", d)
    return d


def test_image_gen_writes_ome_zarr_equal_to_tif(toy_model, tmp_path, monkeypatch):
    """A 3-frame time-lapse: axes t,y,x, 0.02/4 µm pixels, a pyramid down to one chunk, values = the TIFF's."""
    src = tmp_path / "src"
    write_stack(src / "movie.tif", np.stack([smooth_image((40, 36), t) for t in range(3)]), "TYX", 0.02)
    monkeypatch.setattr(omezarr, "CHUNK", 64)  # 160x144 output -> levels 160, 80, 40
    kw = dict(models="toy", model_dir=toy_model, dtype="uint16", whole=True)
    image_gen.main(src, tmp_path / "tif", **kw)
    image_gen.main(src, tmp_path / "zarr", out_format="ome-zarr", **kw)
    tif = tifffile.imread(tmp_path / "tif" / "toy" / "movie_toy.tif")
    store = tmp_path / "zarr" / "toy" / "movie_toy.ome.zarr"
    assert store.is_dir() and not list((tmp_path / "zarr" / "toy").glob(".*"))  # no temporary left
    axes, units, levels, scales = read_ngff(store)
    assert axes == ["t", "y", "x"] and units["x"] == units["y"] == "micrometer"
    assert [lv.shape for lv in levels] == [(3, 160, 144), (3, 80, 72), (3, 40, 36)]
    for k, s in enumerate(scales):
        assert s == pytest.approx([1.0, 0.005 * 2 ** k, 0.005 * 2 ** k])
    assert levels[0].dtype == np.uint16 and np.array_equal(levels[0], tif)
    mean = levels[0].astype(np.float64).reshape(3, 80, 2, 72, 2).mean(axis=(2, 4))
    assert np.abs(levels[1] - mean).max() <= 0.5  # 2x2 area mean, rounded
    assert zarr.open_array(str(store / "0"), mode="r").chunks == (1, 64, 64)  # one frame per chunk
    with open_source(store) as s:  # and it reads back as a source (step 1/2/4 input)
        assert (s.nt, s.nz, s.nc, s.ny, s.nx) == (3, 1, 1, 160, 144) and s.pixel_size == pytest.approx(0.005)
    stamp = (store / ".zattrs").stat().st_mtime_ns
    image_gen.main(src, tmp_path / "zarr", out_format="ome-zarr", resume=True, **kw)  # finished: kept as it is
    assert (store / ".zattrs").stat().st_mtime_ns == stamp
    image_gen.main(src, tmp_path / "zarr", out_format="ome-zarr", force=True, **{**kw, "dtype": "uint8"})
    assert read_ngff(store)[2][0].dtype == np.uint8 and sorted(p.name for p in store.parent.iterdir()) == [store.name]


def test_frames_written_by_separate_writers_equal_one_stream(tmp_path):
    """Ranks each open the same temporary store and write their own frames (disjoint chunks), in any order."""
    rng = np.random.default_rng(0)
    frames = rng.random((2, 3, 70, 50)).astype(np.float32)  # T=2, Z=3, ImageJ order
    bands = lambda k: iter(np.array_split(frames.reshape(6, 70, 50)[k], 3))  # noqa: E731
    one = write_omezarr_stream(tmp_path / "one.ome.zarr", (bands(k) for k in range(6)), frames.shape, "TZYX",
                               pixel_size=0.1, chunk=32)
    first = OmeZarrWriter(tmp_path / "two.ome.zarr", frames.shape, "TZYX", pixel_size=0.1, chunk=32)
    first.create()
    for k in (5, 0, 3):
        first.write_frame(k, bands(k))
    other = OmeZarrWriter(tmp_path / "two.ome.zarr", frames.shape, "TZYX", pixel_size=0.1, chunk=32)
    for k in (1, 4, 2):
        other.write_frame(k, bands(k))
    first.finish()
    a, b = read_ngff(one), read_ngff(tmp_path / "two.ome.zarr")
    assert a[0] == b[0] == ["t", "z", "y", "x"] and len(a[2]) == 3
    for la, lb in zip(a[2], b[2]):
        assert np.array_equal(la, lb)
    assert np.array_equal(a[2][0], frames)


def test_failed_write_leaves_nothing(tmp_path):
    def pages():
        yield iter([np.zeros((8, 16), np.float32)])
        raise PSSRError("movie.tif: cannot read frame 1")

    with pytest.raises(PSSRError):
        write_omezarr_stream(tmp_path / "x.ome.zarr", pages(), (2, 16, 16), "TYX")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- .zarr sources

def write_source(path: Path, arr: np.ndarray, axes: str, pixel_nm: float = 20.0, version: str = "0.4") -> Path:
    """An OME-Zarr image written by the ome-zarr library itself (pixel size in nanometres)."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image
    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_image(arr, group, axes=list(axes), fmt=fmt, scale_factors=(2,),
                scale={a: pixel_nm for a in "yx"}, axes_units={a: "nanometer" for a in "yx"},
                storage_options={"chunks": (1,) * (arr.ndim - 2) + (32, 32)})
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_zarr_source_axes_pixel_size_and_region_reads(tmp_path, version):
    arr = np.stack([np.stack([smooth_image((70, 90), 10 * c + z) for z in range(3)]) for c in range(2)])  # c,z,y,x
    path = write_source(tmp_path / "cell.ome.zarr", arr, "czyx", 20.0, version)
    assert find_images(tmp_path, recursive=True) == [path] == find_images(tmp_path)
    with open_source(path) as s:
        assert (s.nc, s.nz, s.nt, s.ny, s.nx, s.dtype, s.ftype) == (2, 3, 1, 70, 90, np.uint16, "zarr")
        assert s.pixel_size == pytest.approx(0.02)
        assert np.array_equal(s.read(1, 2, 0, box=(5, 7, 30, 40)), arr[1, 2, 5:35, 7:47])
        assert np.array_equal(s.read(0, 1, 0, step=3), arr[0, 1, ::3, ::3])


def test_not_an_ome_zarr_image_is_one_line(tmp_path):
    zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(10, 10), dtype="uint8", zarr_format=2)
    with pytest.raises(PSSRError, match=r"plain.zarr: not an OME-Zarr image \(no 'multiscales'"):
        open_source(tmp_path / "plain.zarr")
    path = write_source(tmp_path / "f.zarr", np.zeros((20, 20), np.float32), "yx")
    with pytest.raises(PSSRError, match="f.zarr: float32 .floating-point. data is not supported"):
        open_source(path)


def _zarr_tree(root: Path) -> Path:
    """SRC/em/{train,valid}/*.ome.zarr: a z-stack for training, one slice for validation."""
    write_source(root / "em" / "train" / "stack.ome.zarr",
                 np.stack([smooth_image((96, 80), z, np.uint8) for z in range(3)]), "zyx", 8.0)
    write_source(root / "em" / "valid" / "slice.ome.zarr", smooth_image((64, 72), 7, np.uint8), "yx", 8.0)
    return root


def test_zarr_sources_through_steps_2_and_4(tmp_path):
    """Step 1's per-file rows, step 2's tiles (equal to the source region) and step 4 (equal to the same
    image given as TIFF) all read .zarr folders."""
    from utils.info import INFO_COLS, file_rows, write_info
    from utils.tiling import DatasetSpec, make_dataset
    src = _zarr_tree(tmp_path / "src")
    rows = (file_rows(src / "em" / "train" / "stack.ome.zarr", "em", "train", live=False)
            + file_rows(src / "em" / "valid" / "slice.ome.zarr", "em", "valid", live=False))
    assert len(rows) == 4 and {r["ftype"] for r in rows} == {"zarr"} and rows[0]["pixel_size"] == pytest.approx(0.008)
    info = write_info(pd.DataFrame(rows, columns=INFO_COLS), tmp_path / "z.csv")
    make_dataset(tmp_path / "ds", info, DatasetSpec([32], 4, 2, crap_func="no_crap", seed=0))
    ds = tmp_path / "ds" / "s_1_z_no_crap"
    tiles = pd.read_csv(ds / "tiles.csv")
    r = tiles.iloc[0]
    with open_source(r.fn) as s:
        want = to_uint8(normalize(s.read(int(r.c), int(r.z), int(r.t), (int(r.y0), int(r.x0), 32, 32)), r.mi, r.ma))
    got = tifffile.imread(next(ds.rglob(f"hr_*/**/{int(r.id):06d}_*.tif")))
    assert np.array_equal(got, want)

    tif_src = tmp_path / "tif_src"
    write_stack(tif_src / "slice.tif", smooth_image((64, 72), 7, np.uint8), "YX", 0.008)
    image_gen.main(src / "em" / "valid", tmp_path / "out_z", baselines=True)
    image_gen.main(tif_src, tmp_path / "out_t", baselines=True)
    a = tifffile.imread(tmp_path / "out_z" / "LR-bilinear" / "slice_LR-bilinear.tif")
    b = tifffile.imread(tmp_path / "out_t" / "LR-bilinear" / "slice_LR-bilinear.tif")
    assert a.shape == (256, 288) and np.array_equal(a, b)


def test_step1_lists_zarr_folders(tmp_path):
    """Step 1 (build_info) walks <category>/{train,valid}/ and must take .zarr folders as files."""
    from utils.info import build_info
    df = build_info([_zarr_tree(tmp_path / "src")])
    assert sorted(Path(f).name for f in df.fn.unique()) == ["slice.ome.zarr", "stack.ome.zarr"] and len(df) == 4
