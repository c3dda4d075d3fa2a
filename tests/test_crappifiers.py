"""Every crappifier: contract (shape, dtype, range, determinism) and the noise the paper describes."""
import numpy as np
import pytest
from skimage import filters
from skimage.util import random_noise

from utils.crappifiers import CRAPPIFIERS, _local_gaussian, _salt_pepper, crappifier, crappify, downsample
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


@pytest.mark.parametrize("sigma, gain", [(3, 0.05), (5, 0.5)])  # the EM and fluorescence crappifiers' noise
def test_local_gaussian_draws_what_scikit_images_localvar_draws(sigma, gain):
    """The float32 noise (faster) has the distribution of scikit-image's random_noise 'localvar' with the
    blurred-brightness variance, clipping included: mean and spread per band of brightness agree."""
    img = np.tile(np.linspace(0.02, 0.9, 256, dtype=np.float32), (256, 1))
    lvar = (filters.gaussian(img, sigma=sigma) + 1e-10) * gain
    ours = np.stack([_local_gaussian(img, sigma, gain, np.random.default_rng(i)) for i in range(16)])
    theirs = np.stack([random_noise(img, mode="localvar", local_vars=lvar, rng=np.random.default_rng(100 + i))
                       for i in range(16)])
    assert ours.dtype == np.float32

    def bands(a):  # 8 bands of 32 columns each, brightness rising
        return a.transpose(2, 0, 1).reshape(8, -1)
    assert np.abs(bands(ours).mean(1) - bands(theirs).mean(1)).max() < 0.005
    assert bands(ours).std(1) == pytest.approx(bands(theirs).std(1), rel=0.02)
    assert bands(ours).std(1)[0] < 0.5 * bands(ours).std(1)[-1]  # brighter is noisier


@pytest.mark.parametrize("salt", [0.5, 1.0, 0.0])
def test_salt_and_pepper_shares(salt):
    img = np.full((512, 512), 0.5, np.float32)
    out = _salt_pepper(img, 0.02, np.random.default_rng(0), salt)
    assert out.dtype == np.float32 and set(np.unique(out)) <= {0, 0.5, 1}
    assert (out == 1).mean() == pytest.approx(0.02 * salt, abs=0.001)
    assert (out == 0).mean() == pytest.approx(0.02 * (1 - salt), abs=0.001)
    assert _salt_pepper(img, 0, np.random.default_rng(0)) is img


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
