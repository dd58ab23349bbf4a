"""Score SDE: NCSN (v1),
CIFAR-10; annealed Langevin dynamics."""

from configs import presets
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.ncsn_v1(config, '')
    return config
