"""CIFAR-10 defaults (TFDS ``cifar10``): the schema's defaults are the papers' settings."""

import ml_collections

from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
    return get_base_config()
