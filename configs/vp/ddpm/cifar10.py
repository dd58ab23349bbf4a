"""Score SDE: DDPM (Ho et al. 2020), discrete, VP SDE, CIFAR-10; ancestral sampling."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config(sde: str = 'vpsde'):
    config = get_default_configs()
    presets.score_sde_leaf(config, sde, False, 'ancestral_sampling', 'none')
    presets.ddpm_style(config)
    return config
