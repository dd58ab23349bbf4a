"""ScoreFlow, Table 2: VP SDE, deep DDPM++, ImageNet 32×32; likelihood weighting λ = g², t ~
U(ε, 1)."""

from configs import presets
from configs.score_flow.vp import imagenet32_ddpmpp_deep_continuous as score_flow


def get_config():
    config = score_flow.get_config()
    presets.set_weighting(config, 'likelihood')
    return config
