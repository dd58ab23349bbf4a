"""Score SDE: NCSNv2 (``ncsnv2_128``), VE SDE with 1086 noise scales in [0.01, 190], LSUN
bedroom 128×128 (TFDS ``lsun/bedroom``: shorter side shrunk to 128, centre crop);
annealed Langevin dynamics (corrector only, 3 steps per scale, snr 0.095), batch 128.
The original's ``training.continuouse = False`` is a typo read nowhere, so its training
is continuous (the LSUN default), and so is ours."""

from configs import presets
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vesde', True, 'none', 'ald')
    config.sampling.update({'n_steps_each': 3, 'snr': 0.095, 'eps': 1e-5})
    config.training.batch_size = 128
    config.data.update({'category': 'bedroom', 'image_size': 128})
    presets.ncsnv2_style(config, num_scales=1086)
    config.model.update({'name': 'ncsnv2_128', 'sigma_max': 190.0, 'ema_rate': 0.9999})
    return config
