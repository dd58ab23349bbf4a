"""PHOTOS (16×16×3, 256 levels), VP SDE, small DDPM++, weighting 'importance' (λ = g², IS of t)."""

from configs import presets
from configs.default_photos_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.set_weighting(config, 'importance')
    return config
