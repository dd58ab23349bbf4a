"""Score SDE: NCSN++ (discrete SMLD objective, positional embedding), VE SDE, CIFAR-10;
PC sampling (reverse diffusion + Langevin)."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vesde', False, 'reverse_diffusion', 'langevin')
    presets.ncsnpp_positional(config)
    presets.paper_size(config, deep=False)
    return config
