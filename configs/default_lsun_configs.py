"""LSUN 256×256 defaults of Score SDE (``configs/default_lsun_configs.py``), which its
CelebA-HQ and FFHQ files build on too: VE noise scales σ ∈ [0.01, 378] with 2000
steps, batch 64, no dropout, evaluation of snapshots 50 … 96 (loss and samples, no
bits/dim). Leaves set ``data.category`` (TFDS ``lsun/<category>``) or the dataset."""

import ml_collections

from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
    config = get_base_config()
    config.training.update(
        {
            'batch_size': 64,
            'n_iters': 2400001,
            'log_freq': 50,
            'snapshot_freq_for_preemption': 5000,
        }
    )
    config.sampling.snr = 0.075
    config.eval.update(
        {
            'begin_ckpt': 50,
            'end_ckpt': 96,
            'batch_size': 512,
            'enable_sampling': True,
            'enable_loss': True,
            'enable_bpd': False,
        }
    )
    config.data.update({'dataset': 'LSUN', 'image_size': 256})
    config.model.update(
        {'sigma_max': 378.0, 'num_scales': 2000, 'dropout': 0.0, 'embedding_type': 'fourier'}
    )
    return config
