"""Small deterministic models and files for the step-4/5 tests (no training, no downloads)."""
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

import utils  # noqa: F401
from utils.restore import Upsampler


class ConvSR(nn.Module):
    """Bilinear x`scale` then two zero-padded 3x3 convs: a small receptive field, and zero padding
    that darkens tile borders, so un-blended tiles would show seams."""

    def __init__(self, scale: int = 4, n_frames: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.up = Upsampler(scale)
        self.mix = nn.Conv2d(n_frames, 1, 1)
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 3, padding=1)
        with torch.no_grad():
            self.mix.weight.fill_(1 / n_frames)
            self.mix.bias.zero_()

    def forward(self, x):
        y = self.mix(torch.cat([self.up(x[:, i:i + 1]) for i in range(x.shape[1])], 1))
        return torch.sigmoid(self.c2(torch.relu(self.c1(y))) + 4 * (y - 0.5))


def smooth_image(shape, seed: int = 0, dtype=np.uint16) -> np.ndarray:
    """Integer image with structure at several scales (Gaussian-filtered noise)."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(size=shape), 3) + 0.3 * gaussian_filter(rng.normal(size=shape), 1)
    x = (x - x.min()) / (x.max() - x.min())
    top = 250 if dtype == np.uint8 else 4000
    return (x * top + 5).astype(dtype)


def write_stack(path: Path, arr: np.ndarray, axes: str, pixel_size: float = 0.05) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr, imagej=True, metadata={"axes": axes, "unit": "um"},
                     resolution=(1 / pixel_size, 1 / pixel_size))
    return path
