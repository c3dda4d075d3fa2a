"""Every crappifier: contract (shape, dtype, range, determinism) and the noise the paper describes."""
import numpy as np
import pytest

from utils.crappifiers import CRAPPIFIERS, crappifier, crappify, downsample
from utils.errors import PSSRError

NAMES = sorted(CRAPPIFIERS)
NOISY = [n for n in NAMES if n != "no_crap"]


@pytest.fixture(scope="module")
def img():
    yy, xx = np.mgrid[0:128, 0:96]
    return (0.5 + 0.4 * np.sin(yy / 7) * np.cos(xx / 5)).astype(np.float32)


def test_registry_has_the_papers_and_originals_names():
    assert {"no_crap", "new_crap_AG_SP", "new_crap_AG_SP_original", "em_AG_D_sameas_preprint",
            "poisson", "em_P_D_001"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [2, 4])
def test_contract(name, scale, img):
    out = crappify(name, img, scale, np.random.default_rng(0))
    assert out.shape == (128 // scale, 96 // scale) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_state_same_result(name, img):
    a = crappify(name, img, 4, np.random.default_rng(7))
    b = crappify(name, img, 4, np.random.default_rng(7))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", NOISY)
def test_noise_is_added_and_follows_the_seed(name, img):
    a = crappify(name, img, 4, np.random.default_rng(1))
    b = crappify(name, img, 4, np.random.default_rng(2))
    clean = downsample(img, 4)
    assert not np.array_equal(a, b)
    assert np.abs(a - clean).mean() > 0.01


def test_no_crap_is_plain_bilinear_downsampling(img):
    out = crappify("no_crap", img, 4, np.random.default_rng(0))
    assert np.array_equal(out, downsample(img, 4))
    # order-1 sampling of a linear ramp stays linear: no blur, no noise
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1))
    row = crappify("no_crap", ramp, 4, np.random.default_rng(0))[0]
    assert np.allclose(np.diff(row), np.diff(row)[0], atol=1e-5)


def _salt_fraction(name):
    """Fraction of white pixels that the crappifier puts into a black image (scale 1 keeps pixels)."""
    out = crappify(name, np.zeros((512, 512), np.float32), 1, np.random.default_rng(3))
    return (out > 0.5).mean()


def test_paper_fluo_crappifier_salt_and_pepper_on_half_a_percent():
    # paper: salt-and-pepper on 0.5% of pixels -> half of them salt
    assert _salt_fraction("new_crap_AG_SP") == pytest.approx(0.0025, abs=0.0006)


def test_original_fluo_variant_salt_alone_on_half_a_percent():
    # the original code: salt 0.005 and pepper 0.005 separately
    assert _salt_fraction("new_crap_AG_SP_original") == pytest.approx(0.005, abs=0.0008)


def test_em_crappifier_additive_gaussian_scales_with_brightness():
    # local variance = 0.05 x blurred brightness
    for level in (0.2, 0.6):
        flat = np.full((256, 256), level, np.float32)
        out = crappify("em_AG_D_sameas_preprint", flat, 1, np.random.default_rng(0))
        assert out.mean() == pytest.approx(level, abs=0.02)
        assert out.std() == pytest.approx(np.sqrt(0.05 * level), rel=0.12)


def test_poisson_noise_has_shot_noise_variance():
    flat = np.full((256, 256), 0.5, np.float32)
    out = crappify("poisson", flat, 1, np.random.default_rng(0))
    assert out.mean() == pytest.approx(0.5, abs=0.01)
    assert out.std() == pytest.approx(np.sqrt(0.5 / 256), rel=0.1)


def test_unknown_name_lists_known_ones(img):
    with pytest.raises(PSSRError, match="unknown crappifier 'nope'.*new_crap_AG_SP"):
        crappify("nope", img, 4, np.random.default_rng(0))


def test_adding_a_crappifier_is_one_decorated_function(img):
    @crappifier("test_invert")
    def invert(x, scale, rng):
        return downsample(1 - x, scale)
    try:
        assert np.allclose(crappify("test_invert", img, 4, None), 1 - downsample(img, 4), atol=1e-6)
    finally:
        del CRAPPIFIERS["test_invert"]
