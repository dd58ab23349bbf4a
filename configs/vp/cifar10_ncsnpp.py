"""Score SDE: NCSN++ (discrete DDPM objective), VP SDE, CIFAR-10; reverse-diffusion
sampling."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vpsde', False, 'reverse_diffusion', 'none')
    presets.ncsnpp_positional(config)
    presets.paper_size(config, deep=False)
    return config
