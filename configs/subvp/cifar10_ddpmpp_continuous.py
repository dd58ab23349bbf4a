"""Score SDE: DDPM++ (continuous), sub-VP SDE, CIFAR-10; PC sampling (Euler–Maruyama)."""

from configs.vp.cifar10_ddpmpp_continuous import get_config as ddpmpp_config


def get_config():
    return ddpmpp_config('subvpsde')
