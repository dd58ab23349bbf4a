"""DIGITS (8×8, 17 levels), VP SDE, small DDPM++, weighting 'likelihood' (λ = g²)."""

from configs import presets
from configs.default_digits_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.set_weighting(config, 'likelihood')
    return config
