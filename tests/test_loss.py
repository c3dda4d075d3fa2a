"""utils.loss: the SSIM term scores what metric_gen.py scores, and only what a global gain and offset cannot fix."""
import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from utils.loss import loss_name, minmse_pair, sr_loss, ssim_map
from utils.metrics import norm_minmse


def images(seed=0, n=2, size=40):
    g = torch.Generator().manual_seed(seed)
    y = F.avg_pool2d(torch.rand(n, 1, size + 3, size + 3, generator=g), 4, 1)  # smooth structure in [0, 1]
    x = (y + 0.1 * torch.randn(y.shape, generator=g)).clamp(0, 1)
    return x, y


def test_ssim_map_is_scikit_images_ssim():
    x, y = images()
    for i in range(len(x)):
        ref = structural_similarity(y[i, 0].double().numpy(), x[i, 0].double().numpy(), data_range=1.0)
        assert abs(float(ssim_map(x[i:i + 1].double(), y[i:i + 1].double()).mean()) - ref) < 1e-9


def test_minmse_pair_is_norm_minmse():
    x, y = images(1)
    t, p = minmse_pair(x.double(), y.double())
    for i in range(len(x)):
        ref_t, ref_p = norm_minmse(y[i, 0].double().numpy(), x[i, 0].double().numpy(), normalize_gt=False)
        np.testing.assert_allclose(t[i, 0].numpy(), ref_t, atol=1e-6)
        np.testing.assert_allclose(p[i, 0].numpy(), ref_p, atol=1e-6)


def test_ssim_term_ignores_global_gain_and_offset_and_rewards_structure():
    x, y = images(2)
    term = lambda p: float(sr_loss("l1", 1.0)(p, y) - F.l1_loss(p, y))
    assert abs(term(0.5 * x + 0.2) - term(x)) < 1e-5  # the evaluation's affine fit undoes it: no credit
    assert term(y) < 1e-6 < term(x)  # the truth scores SSIM 1; a noisy copy does not
    blurred = F.avg_pool2d(y, 5, 1, 2, count_include_pad=False)
    assert term(blurred) > term(y)


def test_weight_zero_is_the_pixel_loss_and_the_term_trains_in_float32_under_autocast():
    assert sr_loss("l1") is F.l1_loss and sr_loss("mse", 0.0) is F.mse_loss
    x, y = images(3)
    p = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sr_loss("mse", 0.5)(p.bfloat16(), y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_loss_pickles_with_the_standard_module_and_unknown_losses_fail():
    """fastai's learner export pickles the loss function."""
    import pickle
    import pytest
    from utils.errors import PSSRError
    x, y = images(4)
    f = pickle.loads(pickle.dumps(sr_loss("l1", 0.2)))
    assert float(f(x, y)) == float(sr_loss("l1", 0.2)(x, y)) and repr(f) == "l1_loss + 0.2 x (1 - SSIM)"
    with pytest.raises(PSSRError, match="unknown loss 'l2'"):
        sr_loss("l2")


def test_loss_name_reads_the_metadata():
    assert loss_name({"loss": "l1", "ssim_weight": 0.1}) == "l1 + 0.1 x (1 - SSIM)"
    assert loss_name({"loss": "mse"}) == "mse" and loss_name({}) == "mse"  # models saved before the option
