"""Sources that install with the requirements: ``DIGITS`` and ``PHOTOS``.

- ``DIGITS``: ``sklearn.datasets.load_digits`` (1797 8×8 images, levels 0–16, K = 17);
  train = the first ``DIGITS_NUM_TRAIN`` = 1600 of
  ``np.random.default_rng(DIGITS_SEED = 0).permutation(1797)``, test = the other 197;
  labels ``load_digits().target`` (10 classes). Inception cannot judge 8×8 digits: their
  samples are judged by the digits classifier ('digits_mlp', ``digits_classifier.py``).
- ``PHOTOS``: 16×16 RGB patches (K = 256) of seven photographs that install with the
  requirements: scikit-learn's ``load_sample_images()`` (china, flower) and scikit-image's
  ``skimage.data`` (astronaut, coffee, chelsea, rocket, ``stereo_motorcycle()[0]``). Each
  photo is resized with PIL (LANCZOS) so that its shorter side is 128 px (the longer one
  rounded to the nearest pixel), then cut into 16×16 patches on a stride-8 grid, row-major,
  photos in the order of ``PHOTOS_SPLITS``. Split by photograph: train = china, flower,
  astronaut, chelsea, motorcycle (1590 patches), test = coffee, rocket (690). No labels.
"""

from __future__ import annotations

import os
import types
from typing import Any, Dict, Tuple

import ml_collections
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

from datasets.base import InMemorySource, register_source

DIGITS_SEED = 0
DIGITS_NUM_TRAIN = 1600
PHOTOS_SHORT_SIDE = 128
PHOTOS_PATCH = 16
PHOTOS_STRIDE = 8
# Photographs by split (the split is by photograph: no scene is in both).
PHOTOS_SPLITS = {
    'train': ('china', 'flower', 'astronaut', 'chelsea', 'motorcycle'),
    'test': ('coffee', 'rocket'),
}


@register_source
class DigitsData(InMemorySource):
    """scikit-learn's 8×8 digits, 17 levels, the fixed 1600 / 197 split, 10 classes."""

    name = 'DIGITS'
    num_levels = 17
    num_classes = 10
    labels_from = 'the digit'
    feature_net = 'digits_mlp'

    def info(self, config: ml_collections.ConfigDict) -> Dict[str, Any]:
        return {
            'source': 'sklearn.datasets.load_digits',
            'split_seed': DIGITS_SEED,
            'num_train': DIGITS_NUM_TRAIN,
        }

    def load_split(self, data: types.SimpleNamespace, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """Images uint8 ``[n, 8, 8, 1]`` (levels 0–16) and their digits int32 ``[n]``."""
        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1], 0..16
        order = np.random.default_rng(DIGITS_SEED).permutation(len(images))
        part = order[:DIGITS_NUM_TRAIN] if split == 'train' else order[DIGITS_NUM_TRAIN:]
        return images[part], digits.target[part].astype(np.int32)


@register_source
class PhotosData(InMemorySource):
    """Patches of bundled photographs, 256 levels, split by photograph, no labels."""

    name = 'PHOTOS'
    num_levels = 256

    def info(self, config: ml_collections.ConfigDict) -> Dict[str, Any]:
        return {
            'source': 'sklearn.datasets.load_sample_images (china, flower), skimage.data '
            '(astronaut, coffee, chelsea, rocket, stereo_motorcycle()[0] as motorcycle)',
            'recipe': f'PIL LANCZOS resize to shorter side {PHOTOS_SHORT_SIDE}, '
            f'{PHOTOS_PATCH}x{PHOTOS_PATCH} patches on a stride-{PHOTOS_STRIDE} grid',
            'photos': {split: list(names) for split, names in PHOTOS_SPLITS.items()},
        }

    def load_split(self, data: types.SimpleNamespace, split: str) -> Tuple[np.ndarray, None]:
        """The patches of ``split``: its photographs' patches, in ``PHOTOS_SPLITS`` order."""
        patches = [photo_patches(_photo(name)) for name in PHOTOS_SPLITS[split]]
        return np.concatenate(patches), None


def _photo(name: str) -> np.ndarray:
    """One bundled colour photograph, uint8 ``[H, W, 3]`` (no network needed)."""
    if name in ('china', 'flower'):
        bunch = load_sample_images()
        names = [os.path.basename(f) for f in bunch.filenames]
        return bunch.images[names.index(f'{name}.jpg')]
    from skimage import data as photos  # deferred: scikit-image is slow to import

    return photos.stereo_motorcycle()[0] if name == 'motorcycle' else getattr(photos, name)()


def photo_patches(image: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 16, 16, 3]``: ``image`` resized (PIL LANCZOS) to a shorter side of
    ``PHOTOS_SHORT_SIDE`` px, cut on a stride-``PHOTOS_STRIDE`` grid, row-major."""
    height, width = image.shape[:2]
    scale = PHOTOS_SHORT_SIDE / min(height, width)
    size = (round(width * scale), round(height * scale))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    shape = (PHOTOS_PATCH, PHOTOS_PATCH, 3)
    windows = np.lib.stride_tricks.sliding_window_view(resized, shape)  # [h', w', 1, *shape]
    return np.ascontiguousarray(windows[::PHOTOS_STRIDE, ::PHOTOS_STRIDE, 0].reshape(-1, *shape))
