"""Score SDE: NCSN++ (continuous, 256×256), VE SDE, LSUN church (TFDS
``lsun/church_outdoor``), σ_max 380; PC sampling (reverse diffusion + Langevin)."""

from configs import presets
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vesde', True, 'reverse_diffusion', 'langevin')
    config.data.category = 'church_outdoor'
    config.model.sigma_max = 380.0
    presets.ncsnpp_high_resolution(config, 256)
    return config
