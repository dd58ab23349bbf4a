"""Score SDE: NCSN with NCSNv2 techniques 1, 2, 4 (noise scales, sampling schedule),
CelebA 64×64; annealed Langevin dynamics."""

from configs import presets
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.ncsn_v1(config, '124')
    return config
