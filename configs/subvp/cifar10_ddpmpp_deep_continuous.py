"""Score SDE: deep DDPM++ (continuous, 8 res blocks), sub-VP SDE, CIFAR-10."""

from configs.vp.cifar10_ddpmpp_continuous import get_config as ddpmpp_config


def get_config():
    return ddpmpp_config('subvpsde', deep=True)
