"""ScoreFlow: sub-VP, DDPM++, ImageNet32, λ = σ² (Score SDE)."""

from configs.scoreflow_table import get_config as table_config


def get_config():
    return table_config('subvpsde', 'imagenet32', deep=False, weighting='baseline')
