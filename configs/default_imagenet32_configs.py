"""ImageNet 32×32 defaults (the "old" ImageNet32 of the flow literature and ScoreFlow,
TFDS ``downsampled_imagenet/32x32``; see ``datasets/tfds.py``)."""

import ml_collections

from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
    config = get_base_config()
    config.data.dataset = 'IMAGENET32'
    config.data.random_flip = False
    config.model.dropout = 0.0
    config.eval.num_repeats = 1
    # score_flow's dequantization_imagenet32.py: deep context network, 2 × 4 couplings.
    config.deq.update({'layout': 'imagenet32', 'filters': 128, 'blocks': 8})
    return config
