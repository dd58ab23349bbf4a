"""Score SDE: NCSN++ (continuous, positional time embedding), sub-VP SDE, CIFAR-10."""

from configs.vp.cifar10_ncsnpp_continuous import get_config as ncsnpp_config


def get_config():
    return ncsnpp_config('subvpsde')
