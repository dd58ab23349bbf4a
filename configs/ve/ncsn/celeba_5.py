"""Score SDE: NCSN with NCSNv2 technique 5 (EMA),
CelebA 64×64; annealed Langevin dynamics."""

from configs import presets
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.ncsn_v1(config, '5')
    return config
