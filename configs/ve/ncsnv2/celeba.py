"""Score SDE: NCSNv2 (Song & Ermon 2020), VE SDE with 500 noise scales, CelebA 64×64;
annealed Langevin dynamics (corrector only, 5 steps per scale, snr 0.128)."""

from configs import presets
from configs.default_celeba_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vesde', False, 'none', 'ald')
    config.sampling.update({'n_steps_each': 5, 'snr': 0.128})
    presets.ncsnv2_style(config, num_scales=500)
    return config
