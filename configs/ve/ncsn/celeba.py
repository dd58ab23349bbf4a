"""Score SDE: NCSN (v1),
CelebA 64×64; annealed Langevin dynamics.

The original file sets ``training.loss = 'vesde'`` where it means ``training.sde``
(read nowhere; its run would stop for want of ``training.sde``); here the SDE is set."""

from configs import presets
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.ncsn_v1(config, '')
    return config
