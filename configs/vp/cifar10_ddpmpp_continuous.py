"""Score SDE: DDPM++ (continuous), VP SDE, CIFAR-10; PC sampling (Euler–Maruyama)."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config(sde: str = 'vpsde'):
    config = get_default_configs()
    config.training.sde = sde
    config.training.continuous = True
    config.training.reduce_mean = True
    config.sampling.method = 'pc'
    config.sampling.predictor = 'euler_maruyama'
    config.sampling.corrector = 'none'
    config.data.centered = True
    presets.ddpmpp_style(config)
    presets.paper_size(config, deep=False)
    return config
