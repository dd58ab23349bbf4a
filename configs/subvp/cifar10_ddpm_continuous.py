"""Score SDE: the DDPM network (continuous), sub-VP SDE, CIFAR-10."""

from configs.vp.ddpm.cifar10_continuous import get_config as ddpm_config


def get_config():
    return ddpm_config('subvpsde')
