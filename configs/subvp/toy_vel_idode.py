"""TOY (2-D ring of 8 Gaussians), sub-VP SDE, MLP;
velocity parameterization, λ = g², IS of t ∝ g²/σ² · α²/(α²+σ²) (i-DODE)."""

from configs import presets
from configs.default_toy_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = 'subvpsde'
    config.training.eps = config.sampling.eps = config.eval.eps = presets.SUBVP_EPS
    presets.set_velocity(config, 'log1p_snr')
    return config
