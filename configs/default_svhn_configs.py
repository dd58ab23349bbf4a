"""SVHN defaults (TFDS ``svhn_cropped``, 32×32; no flips: digits are not mirror-symmetric)."""

import ml_collections

from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
    config = get_base_config()
    config.data.dataset = 'SVHN'
    config.data.random_flip = False
    config.eval.begin_ckpt = config.eval.end_ckpt = -1  # the newest snapshot
    return config
