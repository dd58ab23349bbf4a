"""Score SDE: the DDPM network trained with the continuous VP objective, CIFAR-10."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config(sde: str = 'vpsde'):
    config = get_default_configs()
    presets.score_sde_leaf(config, sde, True, 'euler_maruyama', 'none')
    presets.ddpm_style(config)
    return config
