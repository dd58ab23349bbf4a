"""ScoreFlow: VP, deep DDPM++, ImageNet32, λ = σ² (Score SDE)."""

from configs.scoreflow_table import get_config as table_config


def get_config():
    return table_config('vpsde', 'imagenet32', deep=True, weighting='baseline')
