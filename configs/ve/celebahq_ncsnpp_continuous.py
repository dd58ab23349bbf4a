"""Score SDE: NCSN++ (continuous, 1024×1024: nf 16, 8 levels, 1 res block), VE SDE,
CelebA-HQ from TFRecords; PC sampling (reverse diffusion + Langevin). The original file
stands alone (it sets every field it uses, and ``device``, read nowhere); the fields it
leaves out come from the LSUN defaults here. The records' path is the original's; pass
yours with ``--config.data.tfrecords_path=.../celebahq-r10.tfrecords``."""

from configs import presets
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    presets.score_sde_leaf(config, 'vesde', True, 'reverse_diffusion', 'langevin')
    presets.faces_1024(config, 'CelebAHQ', '/atlas/u/yangsong/celeba_hq/-r10.tfrecords')
    return config
