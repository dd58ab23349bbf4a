"""CelebA 64×64 defaults (TFDS ``celeb_a``: centre crop 140, resize, as Score SDE)."""

import ml_collections

from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
    config = get_base_config()
    config.data.dataset = 'CELEBA'
    config.data.image_size = 64
    config.model.sigma_max = 90.0
    return config
