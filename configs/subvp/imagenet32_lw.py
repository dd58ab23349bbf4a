"""ScoreFlow, Table 2: sub-VP SDE, DDPM++, ImageNet 32×32; likelihood weighting λ = g², t ~
U(ε, 1)."""

from configs import presets
from configs.score_flow.subvp import imagenet32_ddpmpp_continuous as score_flow


def get_config():
    config = score_flow.get_config()
    presets.set_weighting(config, 'likelihood')
    return config
