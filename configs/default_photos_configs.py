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

from configs import presets
from configs.base import get_base_config


def get_default_configs() -> ml_collections.ConfigDict:
    config = get_base_config()
    training = config.training
    training.sde = 'vpsde'
    training.reduce_mean = True
    training.batch_size = 128
    training.n_iters = 300
    training.n_jitted_steps = 10
    training.snapshot_freq = 300
    training.snapshot_freq_for_preemption = 150
    training.eval_freq = 100
    training.log_freq = 50

    config.sampling.method = 'ode'

    evaluate = config.eval
    evaluate.begin_ckpt = evaluate.end_ckpt = 1
    evaluate.batch_size = 256
    evaluate.enable_loss = True
    evaluate.num_repeats = 1
    evaluate.num_samples = 1024

    data = config.data
    data.dataset = 'PHOTOS'
    data.image_size = 16
    data.num_channels = 3
    data.num_bins = 256
    data.centered = True
    data.random_flip = True
    data.uniform_dequantization = True

    presets.ddpmpp_style(config)
    config.model.update(
        {
            'nf': 32,
            'ch_mult': (1, 2),
            'num_res_blocks': 1,
            'attn_resolutions': (),
            'dropout': 0.1,
            'ema_rate': 0.999,
        }
    )
    config.optim.lr = 1e-3
    config.optim.warmup = 100
    return config
