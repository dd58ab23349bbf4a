"""ScoreFlow: VP, DDPM++, ImageNet32, likelihood weighting."""

from configs.scoreflow_table import get_config as table_config


def get_config():
    return table_config('vpsde', 'imagenet32', deep=False, weighting='lw')
