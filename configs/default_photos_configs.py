"""PHOTOS: 16×16 RGB patches of seven bundled photographs (3 channels, 256 levels; train
1590 patches of five photos, test 690 of two others; ``datasets`` module docstring).

The small DDPM++ of the DIGITS defaults (nf 32, ch_mult (1, 2), 1 res block, no attention)
on 16×16×3 inputs (716k parameters, about 4× the FLOPs of DIGITS per step), trained 300
steps (24 epochs of batch 128) so that training, compilation and the one snapshot with its
64 ODE samples included, fits in about 8 minutes on 2 CPU cores (measured: 1.0 steps/s on
2 quiet cores, 0.7–0.8 when shared). That is a smoke-test budget: the loss is still
falling at 300 steps and the samples are far from photographs. Random horizontal flips
(natural images are mirror symmetric) and uniform dequantization, as for DIGITS; warmup
100 of the 300 steps.
"""

import ml_collections

from configs import default_digits_configs


def get_default_configs() -> ml_collections.ConfigDict:
    """The DIGITS defaults (same network, optimizer, evaluation) with PHOTOS' data and
    a shorter schedule."""
    config = default_digits_configs.get_default_configs()
    config.training.update(
        {
            'n_iters': 300,
            'snapshot_freq': 300,
            'snapshot_freq_for_preemption': 150,
            'eval_freq': 100,
            'log_freq': 50,
        }
    )
    config.data.update(
        {
            'dataset': 'PHOTOS',
            'image_size': 16,
            'num_channels': 3,
            'num_bins': 256,
            'random_flip': True,
        }
    )
    config.optim.warmup = 100
    return config
