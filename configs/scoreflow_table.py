"""The ScoreFlow experiments (Song et al., NeurIPS 2021, Table 2), one function.

DDPM++ as Score SDE's ``vp/cifar10_ddpmpp_continuous`` (positional time embedding),
reduce_mean, probability-flow ODE sampling, with yang-song/score_flow's settings:
sub-VP trains, samples and evaluates likelihoods from ε = 1e-2; VP from ε = 1e-5, except
ImageNet32 with likelihood weighting + importance sampling, ε = 5e-5 (score_flow's
imagenet32 configs meant this but tested the flags before the command line set them, so
there it only took effect when the file was edited).
"""

import importlib

import ml_collections

from configs import presets

DATASETS = ('cifar10', 'imagenet32')
SDES = ('vpsde', 'subvpsde')


def get_config(sde: str, dataset: str, deep: bool, weighting: str) -> ml_collections.ConfigDict:
    """Config of one table entry.

    Args:
      sde: 'vpsde' or 'subvpsde'.
      dataset: 'cifar10' or 'imagenet32'.
      deep: 8 residual blocks per resolution instead of 4 (``*_deep_*`` configs).
      weighting: 'baseline' (λ = σ²), 'lw' (λ = g²) or 'lw_is' (λ = g², t importance-
        sampled).
    """
    if sde not in SDES or dataset not in DATASETS:
        raise ValueError(f'sde must be one of {SDES} and dataset one of {DATASETS}')
    defaults = importlib.import_module(f'configs.default_{dataset}_configs')
    config = defaults.get_default_configs()
    config.training.sde = sde
    config.training.continuous = True
    config.training.reduce_mean = True
    config.sampling.method = 'ode'
    config.data.centered = True
    presets.ddpmpp_style(config)
    presets.paper_size(config, deep)
    presets.set_weighting(config, weighting)
    eps = _smallest_time(sde, dataset, weighting)
    config.training.eps = config.eval.eps = eps
    config.sampling.eps = max(eps, 1e-3)
    return config


def _smallest_time(sde: str, dataset: str, weighting: str) -> float:
    """ε of score_flow's configs (training.smallest_time, also used for likelihoods)."""
    if sde == 'subvpsde':
        return presets.SUBVP_EPS
    if dataset == 'imagenet32' and weighting == 'lw_is':
        return 5e-5
    return 1e-5
