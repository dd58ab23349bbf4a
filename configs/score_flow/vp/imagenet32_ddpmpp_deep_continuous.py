"""score_flow configs/vp/imagenet32_ddpmpp_deep_continuous.py: as
``imagenet32_ddpmpp_continuous`` with the deep DDPM++ (8 residual blocks per resolution),
950001 training steps, evaluated at checkpoint 19."""

from configs import presets
from configs.score_flow.vp import imagenet32_ddpmpp_continuous


def get_config():
    config = imagenet32_ddpmpp_continuous.get_config()
    presets.paper_size(config, deep=True)
    config.eval.begin_ckpt = config.eval.end_ckpt = 19
    return config
