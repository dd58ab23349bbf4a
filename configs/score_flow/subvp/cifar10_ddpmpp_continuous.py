"""score_flow configs/subvp/cifar10_ddpmpp_continuous.py: sub-VP SDE, DDPM++ (continuous,
4 residual blocks), CIFAR-10, probability-flow ODE sampling; σ²-weighting unless the
leaf (or the command line) sets the likelihood weighting.

score_flow's ``training.smallest_time`` is ``training.eps`` here (training, and ``eval.eps``
for likelihoods), its ``sampling.smallest_time`` is ``sampling.eps``.
"""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = 'subvpsde'
    training.continuous = True
    training.reduce_mean = True
    training.eps = config.eval.eps = 1e-2
    config.sampling.method = 'ode'
    config.sampling.eps = 1e-2
    config.data.centered = True
    presets.ddpmpp_style(config)
    presets.paper_size(config, deep=False)
    return config
