"""ScoreFlow: VP, deep DDPM++, CIFAR-10, λ = σ² (Score SDE)."""

from configs.scoreflow_table import get_config as table_config


def get_config():
    return table_config('vpsde', 'cifar10', deep=True, weighting='baseline')
