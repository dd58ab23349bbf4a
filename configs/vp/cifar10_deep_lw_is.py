"""ScoreFlow, Table 2: VP SDE, deep DDPM++, CIFAR-10; likelihood weighting λ = g² with
importance sampling of t."""

from configs import presets
from configs.score_flow.vp import cifar10_ddpmpp_deep_continuous as score_flow


def get_config():
    config = score_flow.get_config()
    presets.set_weighting(config, 'importance')
    return config
