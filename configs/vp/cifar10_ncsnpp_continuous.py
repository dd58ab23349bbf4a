"""Score SDE: NCSN++ (continuous, positional time embedding), VP SDE, CIFAR-10; PC
sampling (Euler–Maruyama)."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config(sde: str = 'vpsde', deep: bool = False):
    config = get_default_configs()
    presets.score_sde_leaf(config, sde, True, 'euler_maruyama', 'none')
    presets.ncsnpp_positional(config)
    presets.paper_size(config, deep)
    return config
