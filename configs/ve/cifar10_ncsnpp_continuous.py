"""Score SDE: NCSN++ (continuous), VE SDE, CIFAR-10; PC sampling (reverse diffusion +
Langevin)."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config(deep: bool = False):
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vesde', True, 'reverse_diffusion', 'langevin')
    presets.ncsnpp_style(config)
    presets.paper_size(config, deep)
    return config
