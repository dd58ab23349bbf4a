"""Pictures: image grids (rows labelled, masked pixels tinted) and 2-D scatter images of
samples, plots of metrics, PNG files.

Images are NHWC arrays in [0, 1]; pictures are uint8 ``[H, W, 1|3]`` arrays written as PNG
through :func:`file_io.atomic_write`; plots are drawn by matplotlib's object API (no
display, no pyplot state).
"""

from __future__ import annotations

import io
import math
import os
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

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


MIN_LABELLED_ROW = 24  # pixels per grid row once labels are drawn beside the rows
LABEL_SIZE = 12  # their font size (pixels)
MASK_TINT = (0.95, 0.25, 0.25)  # the colour of unknown pixels in an inpainting input


def label_rows(grid: np.ndarray, labels: Sequence[str], cell: int, pad: int = 1) -> np.ndarray:
    """The uint8 picture ``grid`` (an :func:`image_grid` of rows ``cell`` pixels high with
    ``pad`` between them) with ``labels[i]`` written left of row ``i``, as RGB: the grid is
    scaled up by an integer factor (rows of at least :data:`MIN_LABELLED_ROW` pixels) and a
    white margin holds the text."""
    factor = max(1, math.ceil(MIN_LABELLED_ROW / (cell + pad)))
    big = np.repeat(np.repeat(grid, factor, 0), factor, 1)
    image = Image.fromarray(big[..., 0] if big.shape[-1] == 1 else big).convert('RGB')
    font = ImageFont.load_default(size=LABEL_SIZE)
    margin = int(max(font.getlength(str(label)) for label in labels)) + LABEL_SIZE
    canvas = Image.new('RGB', (image.width + margin, image.height), 'white')
    canvas.paste(image, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        middle = (pad + i * (cell + pad) + cell / 2) * factor
        draw.text((LABEL_SIZE // 2, middle), str(label), fill='black', font=font, anchor='lm')
    return np.asarray(canvas)


def tint_unknown(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``images`` [N, H, W, C] in [0, 1] as RGB with the pixels where ``mask`` (1 = known,
    broadcastable) is 0 painted :data:`MASK_TINT`, so that the masked region shows even
    where the image is dark."""
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    unknown = np.broadcast_to(np.asarray(mask)[..., :1] == 0, rgb.shape[:-1] + (1,))
    return np.where(unknown, np.asarray(MASK_TINT, rgb.dtype), rgb)


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


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Writes a matplotlib ``Figure`` (laid out tightly) to ``path`` as a PNG, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=dpi)
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


def scatter_plot(
    path: str,
    series: Mapping[str, Tuple[np.ndarray, np.ndarray]],
    xlabel: str,
    ylabel: str,
    title: str = '',
) -> None:
    """A PNG scatter plot of named point sets ``{label: (x, y)}`` (first drawn first, in
    matplotlib's colour cycle) with the diagonal y = x and a legend."""
    fig = Figure(figsize=(4.8, 4.8))
    ax = fig.subplots()
    for label, (x, y) in series.items():
        ax.scatter(np.ravel(x), np.ravel(y), s=4, alpha=0.5, label=label)
    lim = max(float(np.max(np.abs(np.concatenate([np.ravel(a) for a in series.values()])))), 1e-6)
    ax.plot([-lim, lim], [-lim, lim], color='k', lw=0.8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(-lim, lim), ylim=(-lim, lim))
    ax.legend(loc='upper left', fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_metrics(
    path: str,
    metrics: Mapping[str, Mapping[str, Optional[float]]],
    keys: Sequence[Tuple[str, Optional[str]]],
) -> bool:
    """Plots a metrics.json object ``{ckpt: {name: value}}`` over checkpoints as a PNG.

    One panel per ``(key, standard-error key or None)`` of ``keys`` (``--mode eval``: the
    plotted metrics of ``eval_quantities.plotted_metrics``) present in some entry, against
    the training step (``step``, else the checkpoint number), with ±1 standard error bars
    where the entry has one. Returns False (and writes nothing) when there is nothing to plot.
    """
    ckpts = sorted(metrics, key=int)
    panels = [(k, se) for k, se in keys if any(metrics[c].get(k) is not None for c in ckpts)]
    if not panels:
        return False
    fig = Figure(figsize=(4 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    uses_steps = all(metrics[c].get('step') is not None for c in ckpts)
    for ax, (key, se_key) in zip(axes[0], panels):
        rows = [c for c in ckpts if metrics[c].get(key) is not None]
        x = [metrics[c]['step'] if uses_steps else int(c) for c in rows]
        y = [metrics[c][key] for c in rows]
        err = [metrics[c].get(se_key) or 0.0 for c in rows] if se_key else None
        ax.errorbar(x, y, yerr=err, marker='o', capsize=3)
        ax.set_title(f'{key} (± 1 s.e.)' if se_key else key)
        ax.set_xlabel('training step' if uses_steps else 'checkpoint')
        ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True
