"""Score SDE: DDPM (Ho et al. 2020; 256×256: ch_mult (1,1,2,2,4,4)), discrete, VP SDE,
CelebA-HQ 256 from TFRecords; ancestral sampling, learning rate 2e-5. The original names
its 1024² records (``-r10``) with ``image_size = 256`` (kept here; reading them stops
with a message): pass the 256² file,
``--config.data.tfrecords_path=.../celebahq-r08.tfrecords``."""

from configs import presets
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vpsde', False, 'ancestral_sampling', 'none')
    config.data.update(
        {
            'dataset': 'CelebAHQ',
            'image_size': 256,
            'tfrecords_path': '/atlas/u/yangsong/celeba_hq/-r10.tfrecords',
        }
    )
    presets.ddpm_style(config)
    config.model.update({'ch_mult': (1, 1, 2, 2, 4, 4), 'num_scales': 1000})
    config.optim.lr = 2e-5
    return config
