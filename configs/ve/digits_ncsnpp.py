"""DIGITS, VE SDE, small NCSN++; PC sampling (reverse diffusion + Langevin).

σ_max = 10: the largest distance between two centred training digits is 9.6 (Song & Ermon
2020, technique 1: σ_max ≈ the largest pairwise distance)."""

from configs import presets
from configs.default_digits_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = 'vesde'
    config.model.sigma_max = 10.0
    config.sampling.method = 'pc'
    config.sampling.predictor = 'reverse_diffusion'
    config.sampling.corrector = 'langevin'
    config.sampling.eps = 1e-5
    presets.ncsnpp_style(config)
    config.model.update({'fir': False, 'ema_rate': 0.999})
    return config
