"""ScoreFlow, Table 2: VP SDE, DDPM++, ImageNet 32×32; likelihood weighting λ = g² with
importance sampling of t."""

from configs import presets
from configs.score_flow.vp import imagenet32_ddpmpp_continuous as score_flow


def get_config():
    config = score_flow.get_config()
    presets.set_weighting(config, 'importance')
    # score_flow's file meant ε = 5e-5 with likelihood weighting + importance sampling,
    # but tested the flags before the command line set them: it only took effect when the
    # file was edited. Here it takes effect.
    config.training.eps = config.eval.eps = 5e-5
    return config
