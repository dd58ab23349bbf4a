"""Score SDE: DDPM (Ho et al. 2020; 256×256: ch_mult (1,1,2,2,4,4)), discrete, VP SDE, LSUN
bedroom (TFDS ``lsun/bedroom``); ancestral sampling, learning rate 2e-5."""

from configs import presets
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vpsde', False, 'ancestral_sampling', 'none')
    config.data.category = 'bedroom'
    presets.ddpm_style(config)
    config.model.update({'ch_mult': (1, 1, 2, 2, 4, 4), 'num_scales': 1000})
    config.optim.lr = 2e-5
    return config
