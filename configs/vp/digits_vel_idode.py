"""DIGITS (8×8, 17 levels), VP SDE, small DDPM++;
velocity parameterization, λ = g², IS of t ∝ g²/σ² · α²/(α²+σ²) (i-DODE)."""

from configs import presets
from configs.default_digits_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.set_velocity(config, 'log1p_snr')
    return config
