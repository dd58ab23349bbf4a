"""Score SDE: DDPM without time conditioning, discrete, VP SDE, CIFAR-10."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config(sde: str = 'vpsde'):
    config = get_default_configs()
    presets.score_sde_leaf(config, sde, False, 'ancestral_sampling', 'none')
    presets.ddpm_style(config, conditional=False)
    return config
