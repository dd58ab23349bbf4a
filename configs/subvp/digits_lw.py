"""DIGITS, sub-VP SDE, small DDPM++, likelihood weighting λ = g², t ~ U(ε, 1); ε = 1e-2
for training, sampling and likelihoods, as score_flow's sub-VP configs."""

from configs import presets
from configs.default_digits_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = 'subvpsde'
    presets.set_weighting(config, 'likelihood')
    config.training.eps = config.sampling.eps = config.eval.eps = presets.SUBVP_EPS
    return config
