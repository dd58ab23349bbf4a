"""Score SDE: NCSN++ (continuous, 256×256), VE SDE, CelebA-HQ 256 from TFRecords, σ_max
348; PC sampling (reverse diffusion + Langevin). The records' path is the original's;
pass yours with ``--config.data.tfrecords_path=.../celebahq-r08.tfrecords``."""

from configs import presets
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vesde', True, 'reverse_diffusion', 'langevin')
    config.data.update(
        {
            'dataset': 'CelebAHQ',
            'image_size': 256,
            'tfrecords_path': '/home/yangsong/ncsc/celebahq/r08.tfrecords',
        }
    )
    config.model.sigma_max = 348.0
    presets.ncsnpp_high_resolution(config, 256)
    return config
