"""PHOTOS (16×16×3, 256 levels), VP SDE, small DDPM++, weighting 'lw_is' (see configs.presets)."""

from configs import presets
from configs.default_photos_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.set_weighting(config, 'lw_is')
    return config
