"""ScoreFlow, Table 2: sub-VP SDE, DDPM++, ImageNet 32×32; σ²-weighting (the Score SDE
objective)."""

from configs import presets
from configs.score_flow.subvp import imagenet32_ddpmpp_continuous as score_flow


def get_config():
    config = score_flow.get_config()
    presets.set_weighting(config, 'sigma2')
    return config
