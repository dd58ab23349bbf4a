"""Score SDE: NCSN++ (continuous, 256×256), VE SDE, LSUN bedroom (TFDS ``lsun/bedroom``);
PC sampling (reverse diffusion + Langevin)."""

from configs import presets
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vesde', True, 'reverse_diffusion', 'langevin')
    config.data.category = 'bedroom'
    presets.ncsnpp_high_resolution(config, 256)
    return config
