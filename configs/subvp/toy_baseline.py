"""TOY (2-D ring of 8 Gaussians), sub-VP SDE, MLP, weighting 'sigma2' (λ = σ²);
ε = 1e-2 for training, sampling and likelihoods, as score_flow's sub-VP configs."""

from configs import presets
from configs.default_toy_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.training.sde = 'subvpsde'
    presets.set_weighting(config, 'sigma2')
    config.training.eps = config.sampling.eps = config.eval.eps = presets.SUBVP_EPS
    return config
