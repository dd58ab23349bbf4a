"""score_flow configs/subvp/imagenet32_ddpmpp_continuous.py: sub-VP SDE, DDPM++ (continuous,
4 residual blocks), ImageNet 32×32, probability-flow ODE sampling: the VP file's settings with
ε = 1e-2 for training, sampling and likelihoods (near t = 0 sub-VP's σ(t) ≈ β₀t is far
below VP's √(β₀t): 1e-6 against 1e-3 at t = 1e-5)."""

from configs.score_flow.vp import imagenet32_ddpmpp_continuous as vp


def get_config():
    config = vp.get_config()
    config.training.sde = 'subvpsde'
    config.training.eps = config.eval.eps = 1e-2
    config.sampling.eps = 1e-2
    return config
