"""Score SDE: NCSN++ (continuous, deep: 8 res blocks), VE SDE, CIFAR-10 (FID 2.20)."""

from configs.ve.cifar10_ncsnpp_continuous import get_config as ncsnpp_config


def get_config():
    return ncsnpp_config(deep=True)
