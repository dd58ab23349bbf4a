"""ScoreFlow: sub-VP, DDPM++, CIFAR-10, likelihood weighting + importance sampling."""

from configs.scoreflow_table import get_config as table_config


def get_config():
    return table_config('subvpsde', 'cifar10', deep=False, weighting='lw_is')
