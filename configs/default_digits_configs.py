"""Embedded default: scikit-learn's 8×8 digits (1 channel, 17 grey levels, 1600 / 197).

A small DDPM++ (nf 32, ch_mult (1, 2), 1 res block, no attention; 0.72M parameters,
11.5 GFLOP per training step of 128), trained 2000 steps so that the whole quick start fits
in 15 minutes on 2 CPU cores (measured times and bits/dim: README, Results).

Training uses uniform dequantization: with only K = 17 levels, x̄/(K − 1) and the
evaluation points (x̄ + u)/K differ by up to half a bin, so a model trained on the former
would be evaluated off its support.
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
    training.n_iters = 2000
    training.n_jitted_steps = 10
    training.snapshot_freq = 1000
    training.snapshot_freq_for_preemption = 500
    training.eval_freq = 500
    training.log_freq = 100

    config.sampling.method = 'ode'

    evaluate = config.eval
    evaluate.begin_ckpt = evaluate.end_ckpt = -1  # the newest snapshot (eval and sample)
    evaluate.batch_size = 256
    evaluate.enable_loss = True
    evaluate.num_repeats = 1
    evaluate.num_samples = 1024

    data = config.data
    data.dataset = 'DIGITS'
    data.image_size = 8
    data.num_channels = 1
    data.num_bins = 17
    data.centered = True
    data.random_flip = False
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
    config.optim.warmup = 200

    config.classifier.update(  # p_t(digit | x) for class-conditional sampling
        {
            'blocks_per_group': 2,
            'channel_multiplier': 2,
            'n_iters': 2000,
            'lr': 1e-3,
            'warmup': 100,
            'snapshot_freq': 1000,
            'eval_freq': 500,
        }
    )
    # A small Flow++ dequantizer (the CIFAR-10 layout, narrower): 323,184 parameters.
    config.deq.update({'filters': 32, 'components': 8, 'blocks': 1, 'n_iters': 2000})
    return config
