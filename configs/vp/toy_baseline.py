"""TOY (2-D ring of 8 Gaussians), VP SDE, MLP, weighting 'sigma2' (λ = σ²)."""

from configs import presets
from configs.default_toy_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.set_weighting(config, 'sigma2')
    return config
