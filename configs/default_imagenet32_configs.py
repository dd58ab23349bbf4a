"""ImageNet 32×32 defaults (the "old" ImageNet32 of the flow literature and ScoreFlow,
TFDS ``downsampled_imagenet/32x32``; see ``datasets.py``)."""

import ml_collections

from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
    config = get_base_config()
    config.data.dataset = 'IMAGENET32'
    config.data.random_flip = False
    config.model.dropout = 0.0
    config.eval.num_repeats = 1
    return config
