"""Pictures of samples: image grids, 2-D scatter images, PNG files.

Images are NHWC arrays in [0, 1]; pictures are uint8 ``[H, W, 1|3]`` arrays written as PNG
through :func:`file_io.atomic_write`.
"""

from __future__ import annotations

import io
import math
import os
from typing import Optional

import numpy as np
from PIL import Image

import file_io

MIN_PNG_WIDTH = 256  # tiny images (8×8 digits) are scaled up with visible pixels


def image_grid(images: np.ndarray, ncol: Optional[int] = None, pad: int = 1) -> np.ndarray:
    """Tiles [N, H, W, C] images in [0, 1] into one uint8 image [rows·(H+pad)+pad, …]."""
    n, h, w, c = images.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for i, img in enumerate(np.clip(images, 0.0, 1.0)):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = img
    return np.round(grid * 255).astype(np.uint8)


def scatter_image(points: np.ndarray, size: int = 256) -> np.ndarray:
    """A 2-D histogram of [N, 2] points as a uint8 grey image (dark = dense)."""
    lo, hi = np.percentile(points, [0.5, 99.5], axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    hist, _, _ = np.histogram2d(
        points[:, 1], points[:, 0], bins=size, range=[[lo[1], hi[1]], [lo[0], hi[0]]]
    )
    img = 1.0 - np.sqrt(hist / max(hist.max(), 1.0))
    return np.round(img[::-1, :, None] * 255).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> None:
    """Saves a uint8 [H, W, 1|3] image as PNG (atomically)."""
    mode = 'L' if image.shape[-1] == 1 else 'RGB'
    img = Image.fromarray(image[..., 0] if mode == 'L' else image, mode=mode)
    if img.width < MIN_PNG_WIDTH:
        factor = int(math.ceil(MIN_PNG_WIDTH / img.width))
        img = img.resize((img.width * factor, img.height * factor), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    file_io.atomic_write(path, buf.getvalue())


def sample_picture(samples: np.ndarray) -> Optional[np.ndarray]:
    """The picture of samples: a grid of images in [0, 1], a scatter of the first two
    coordinates of vectors, or None for 1-dimensional vectors."""
    if samples.ndim == 4:
        return image_grid(samples)
    if samples.shape[-1] >= 2:
        return scatter_image(samples[:, :2])
    return None


def save_samples(folder: str, samples: np.ndarray) -> None:
    """``<folder>/sample.npz`` (float32 samples) and ``<folder>/sample.png`` (the picture)."""
    file_io.save_npz(os.path.join(folder, 'sample.npz'), samples=samples)
    picture = sample_picture(samples)
    if picture is not None:
        save_png(os.path.join(folder, 'sample.png'), picture)
