"""Steps 1-2 on real EM (the ISBI 2012 ssTEM volume in ../shared); skipped when ../shared is absent."""
from pathlib import Path

import numpy as np
import pytest
import tifffile

import utils  # noqa: F401
from utils.info import build_info, write_info
from utils.tiling import DatasetSpec, make_dataset

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "em_isbi2012" / "isbi2012_train.tif"
pytestmark = pytest.mark.skipif(not ISBI.is_file(), reason="../shared/data/em_isbi2012 not available")


@pytest.fixture(scope="module")
def isbi_info(module_dir):
    """The volume split as the shared README suggests: slices 0-23 train, 24-29 valid (4 nm pixels kept)."""
    root = module_dir("isbi")
    vol = tifffile.imread(ISBI)
    for split, part in (("train", vol[:24]), ("valid", vol[24:])):
        (root / "em" / split).mkdir(parents=True)
        tifffile.imwrite(root / "em" / split / f"isbi_{split}.tif", part, imagej=True,
                         resolution=(250, 250), metadata={"unit": "um", "axes": "ZYX", "spacing": 0.05})
    return write_info(build_info([root]), root / "isbi.csv"), vol


def test_info_of_real_volume(isbi_info):
    info, vol = isbi_info
    import pandas as pd
    df = pd.read_csv(info)
    assert len(df) == 30 and set(df.dsplit) == {"train", "valid"}
    assert df.pixel_size.iloc[0] == pytest.approx(0.004)
    row = df[(df.dsplit == "valid") & (df.z == 0)].iloc[0]
    assert row.mi == pytest.approx(np.percentile(vol[24], 2))
    assert row.ma == pytest.approx(np.percentile(vol[24], 99.99))


def test_z_multiframe_tiles_from_real_volume(isbi_info, tmp_path):
    info, vol = isbi_info
    meta = make_dataset(tmp_path, info, DatasetSpec([128], 6, 2, "em_AG_D_sameas_preprint", n_frames=5, lr_type="z",
                                                    seed=3))
    root = tmp_path / "z_5_isbi_em_AG_D_sameas_preprint"
    hr = sorted((root / "hr_z_128_z_5" / "train" / "em").glob("*.tif"))
    assert meta["n_tiles"] == 8 and len(hr) == 6
    tiles = __import__("pandas").read_csv(root / "tiles_z_5.csv")
    for f in hr[:3]:
        lr = np.load(str(f).replace("hr_z_128_z_5", "lr_z_128_z_5").replace(".tif", ".npy"))
        assert lr.shape == (5, 32, 32) and lr.dtype == np.uint8
        r = tiles[tiles.id == int(f.name.split("_")[0])].iloc[0]
        assert 2 <= r.z <= 21  # a legal centre: two slices on each side inside the train file
        # HR is the normalized centre slice of that box
        src = vol[:24][r.z, r.y0:r.y0 + 128, r.x0:r.x0 + 128].astype(np.float32)
        want = np.clip(np.round(np.clip((src - r.mi) / (r.ma - r.mi), 0, 1) * 255), 0, 255)
        assert np.abs(tifffile.imread(f).astype(np.float32) - want).max() <= 1
