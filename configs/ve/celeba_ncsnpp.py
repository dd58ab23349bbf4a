"""Score SDE: NCSN++ (discrete SMLD objective, positional embedding), VE SDE, CelebA
64×64; PC sampling (reverse diffusion + Langevin). The original file's
``model.sigma_begin = 90`` is read nowhere in its code and left out."""

from configs import presets
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vesde', False, 'reverse_diffusion', 'langevin')
    presets.ncsnpp_positional(config)
    presets.paper_size(config, deep=False)
    return config
