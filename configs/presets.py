"""Settings shared by several leaf configs, written once.

``ddpmpp_style`` / ``ncsnpp_style`` set the architecture flags of DDPM++ (VP, sub-VP) and
NCSN++ (VE) from Score SDE (Song et al., 2021, Table 3 / configs); ``paper_size`` sets the
CIFAR-10 network size; ``set_weighting`` the training weighting (``sde_lib.WEIGHTINGS``).
"""

from __future__ import annotations

import ml_collections

import sde_lib

# Flags shared by NCSN++ and DDPM++ (everything but the width and depth).
_COMMON_STYLE = {
    'name': 'ncsnpp',
    'normalization': 'GroupNorm',
    'nonlinearity': 'swish',
    'resamp_with_conv': True,
    'conditional': True,
    'fir_kernel': [1, 3, 3, 1],
    'skip_rescale': True,
    'resblock_type': 'biggan',
    'progressive': 'none',
    'progressive_combine': 'sum',
    'attention_type': 'ddpm',
    'init_scale': 0.0,
    'fourier_scale': 16.0,
    'conv_size': 3,
}
_DDPMPP_STYLE = {
    **_COMMON_STYLE,
    'scale_by_sigma': False,
    'ema_rate': 0.9999,
    'fir': False,
    'progressive_input': 'none',
    'embedding_type': 'positional',
}
_NCSNPP_STYLE = {
    **_COMMON_STYLE,
    'scale_by_sigma': True,
    'ema_rate': 0.999,
    'fir': True,
    'progressive_input': 'residual',
    'embedding_type': 'fourier',
}

# Smallest time ε of sub-VP in yang-song/score_flow (training, sampling and likelihoods):
# near t = 0 sub-VP's σ(t) ≈ β₀t is far below VP's √(β₀t) (1e-6 vs 1e-3 at t = 1e-5).
SUBVP_EPS = 1e-2


def score_sde_defaults(config: ml_collections.ConfigDict) -> None:
    """Where Score SDE's ``default_<dataset>_configs.py`` differ from ours (which are
    ScoreFlow's): its evaluation (loss of snapshots 9 … 26, no bits/dim; CelebA: 1 … 26
    with samples, and a corrector snr of 0.17) and logging. The LSUN defaults (also those
    of CelebA-HQ and FFHQ) are Score SDE's own already."""
    if config.data.dataset not in ('CIFAR10', 'CELEBA'):
        return
    config.training.log_freq = 50
    config.eval.update({'begin_ckpt': 9, 'end_ckpt': 26, 'enable_loss': True, 'enable_bpd': False})
    if config.data.dataset == 'CELEBA':
        config.eval.update({'begin_ckpt': 1, 'enable_sampling': True})
        config.sampling.snr = 0.17


def score_sde_leaf(
    config: ml_collections.ConfigDict, sde: str, continuous: bool, predictor: str, corrector: str
) -> None:
    """A Score SDE leaf: its SDE, time, PC sampler, and the VP / sub-VP conventions of its
    files (mean over dimensions, data in [−1, 1])."""
    config.training.update({'sde': sde, 'continuous': continuous})
    config.sampling.update({'method': 'pc', 'predictor': predictor, 'corrector': corrector})
    if sde != 'vesde':
        config.training.reduce_mean = True
        config.data.centered = True
    else:
        config.sampling.eps = 1e-5  # Score SDE's run_lib samples VE down to t = 1e-5
    score_sde_defaults(config)


def ddpm_style(
    config: ml_collections.ConfigDict, *, ve: bool = False, conditional: bool = True
) -> None:
    """The DDPM network of Score SDE's files (Ho et al. 2020: nf 128, ch_mult (1,2,2,2),
    2 res blocks, attention at 16); on VE its output is divided by σ and its EMA is 0.999."""
    config.model.update(
        {
            'name': 'ddpm',
            'scale_by_sigma': ve,
            'ema_rate': 0.999 if ve else 0.9999,
            'normalization': 'GroupNorm',
            'nonlinearity': 'swish',
            'nf': 128,
            'ch_mult': (1, 2, 2, 2),
            'num_res_blocks': 2,
            'attn_resolutions': (16,),
            'resamp_with_conv': True,
            'conditional': conditional,
            'conv_size': 3,
        }
    )


def ddpmpp_style(config: ml_collections.ConfigDict) -> None:
    """DDPM++ flags (positional time embedding, no FIR, no progressive input)."""
    config.model.update(_DDPMPP_STYLE)


def ncsnpp_style(config: ml_collections.ConfigDict) -> None:
    """NCSN++ flags (Fourier σ embedding, FIR, residual progressive input, output / σ)."""
    config.model.update(_NCSNPP_STYLE)


def ncsnpp_positional(config: ml_collections.ConfigDict) -> None:
    """NCSN++ as Score SDE's VP / sub-VP and discrete-VE files use it: the NCSN++ flags
    with DDPM++'s positional embedding (and, on VP / sub-VP, its output and EMA)."""
    ncsnpp_style(config)
    config.model.embedding_type = 'positional'
    if config.training.sde != 'vesde':
        config.model.update({'scale_by_sigma': False, 'ema_rate': 0.9999})


def ncsn_v1(config: ml_collections.ConfigDict, techniques: str = '') -> None:
    """NCSN (v1, Song & Ermon 2019) as Score SDE's ``configs/ve/ncsn/<dataset>[_<t>].py``:
    the noise-conditional RefineNet, discrete VE SDE, annealed Langevin dynamics, Adam
    1e-3; ``techniques`` names the NCSNv2 improvements the file adds ('124': its noise
    scales σ_max = 50, L = 232 (CelebA: 90, 500) and sampling schedule; '1245' also the
    EMA 0.999; '5': the EMA alone). Without technique 5 there is no EMA (rate 0)."""
    score_sde_leaf(config, 'vesde', False, 'none', 'ald')
    celeba = config.data.dataset == 'CELEBA'
    sigma_max, num_scales, snr = (90.0, 500, 0.128) if celeba else (50.0, 232, 0.176)
    config.model.update(
        {
            'name': 'ncsn',
            'scale_by_sigma': False,
            'sigma_max': sigma_max if '124' in techniques else 1.0,
            'num_scales': num_scales if '124' in techniques else 10,
            'ema_rate': 0.999 if '5' in techniques else 0.0,
            'normalization': 'InstanceNorm++',
            'nonlinearity': 'elu',
            'nf': 128,
            'interpolation': 'bilinear',
        }
    )
    if '124' in techniques:
        config.sampling.update({'n_steps_each': 5, 'snr': snr})
    else:
        config.sampling.update({'n_steps_each': 100, 'snr': 0.316})
    config.optim.update({'lr': 1e-3, 'warmup': 0, 'grad_clip': -1.0})


def ncsnv2_style(config: ml_collections.ConfigDict, num_scales: int) -> None:
    """NCSNv2 (RefineNet, InstanceNorm++, ELU) and its optimizer: Adam 1e-4, no warm-up,
    no gradient clipping."""
    config.model.update(
        {
            'name': 'ncsnv2_64',
            'scale_by_sigma': True,
            'num_scales': num_scales,
            'ema_rate': 0.999,
            'normalization': 'InstanceNorm++',
            'nonlinearity': 'elu',
            'nf': 128,
            'interpolation': 'bilinear',
        }
    )
    config.optim.update({'lr': 1e-4, 'warmup': 0, 'grad_clip': -1.0})


def ncsnpp_high_resolution(config: ml_collections.ConfigDict, size: int) -> None:
    """NCSN++ of Score SDE's 256² and 1024² files (LSUN, CelebA-HQ, FFHQ): the NCSN++
    flags with input- and output-skip pyramids (``progressive='output_skip'``,
    ``progressive_input='input_skip'``), attention at 16²; at 256: nf 128, ch_mult
    (1,1,2,2,2,2,2), 2 res blocks; at 1024: nf 16, ch_mult (1,2,4,8,16,32,32,32), 1 res
    block, EMA 0.9999."""
    ncsnpp_style(config)
    config.model.update(
        {'progressive': 'output_skip', 'progressive_input': 'input_skip', 'attn_resolutions': (16,)}
    )
    if size == 256:
        config.model.update({'nf': 128, 'ch_mult': (1, 1, 2, 2, 2, 2, 2), 'num_res_blocks': 2})
    elif size == 1024:
        config.model.update(
            {
                'nf': 16,
                'ch_mult': (1, 2, 4, 8, 16, 32, 32, 32),
                'num_res_blocks': 1,
                'ema_rate': 0.9999,
            }
        )
    else:
        raise ValueError(f'Score SDE has NCSN++ files at 256 and 1024 px, not {size}')


def faces_1024(config: ml_collections.ConfigDict, dataset: str, tfrecords_path: str) -> None:
    """What Score SDE's two stand-alone 1024² files (CelebA-HQ, FFHQ) set beyond the LSUN
    defaults: batch 8, σ_max 1348, corrector snr 0.15, evaluation of snapshots 1 … 96 in
    batches of 1024, the NCSN++ of 1024 px, and their data."""
    config.training.batch_size = 8
    config.sampling.snr = 0.15
    config.eval.update({'batch_size': 1024, 'begin_ckpt': 1, 'end_ckpt': 96})
    config.data.update({'dataset': dataset, 'image_size': 1024, 'tfrecords_path': tfrecords_path})
    config.model.sigma_max = 1348.0
    ncsnpp_high_resolution(config, 1024)


def paper_size(config: ml_collections.ConfigDict, deep: bool) -> None:
    """The CIFAR-10 networks: nf 128, ch_mult (1,2,2,2), 4 (deep: 8) res blocks, attn 16."""
    config.model.update(
        {
            'nf': 128,
            'ch_mult': (1, 2, 2, 2),
            'num_res_blocks': 8 if deep else 4,
            'attn_resolutions': (16,),
        }
    )
    if deep:
        config.training.n_iters = 950001


def set_weighting(config: ml_collections.ConfigDict, weighting: str) -> None:
    """Set the training weighting: one of ``sde_lib.WEIGHTINGS`` ('sigma2': Score SDE's
    baseline, the ``*_baseline`` files; 'likelihood': λ = g², ``*_lw``; 'importance':
    λ = g² with importance-sampled t, ``*_lw_is``), through the original code's flags."""
    if weighting not in sde_lib.WEIGHTING_FLAGS:
        raise ValueError(f'unknown weighting {weighting!r}; known: {sde_lib.WEIGHTINGS}')
    lw, iw = sde_lib.WEIGHTING_FLAGS[weighting]
    config.training.likelihood_weighting = lw
    config.training.importance_weighting = iw


def set_velocity(config: ml_collections.ConfigDict, importance_density: str) -> None:
    """i-DODE's recipe (Zheng et al., ICML 2023): the network predicts the velocity
    (``model.parameterization='velocity'``), trained with λ = g² and importance-sampled t
    of ``importance_density`` ('log_snr': ScoreFlow's p ∝ g²/σ², the ``*_vel_is`` files;
    'log1p_snr': i-DODE's p ∝ g²/σ² · α²/(α² + σ²), the ``*_vel_idode`` files)."""
    set_weighting(config, 'importance')
    config.model.parameterization = 'velocity'
    config.model.scale_by_sigma = False
    config.training.importance_density = importance_density
