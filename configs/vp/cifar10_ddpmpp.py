"""Score SDE: DDPM++ (discrete DDPM objective), VP SDE, CIFAR-10; ancestral sampling."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vpsde', False, 'ancestral_sampling', 'none')
    presets.ddpmpp_style(config)
    presets.paper_size(config, deep=False)
    return config
