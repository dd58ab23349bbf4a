"""``TOY``: ``toy_distribution(config)``, 8 Gaussians on a circle in ``data.dim``
dimensions, continuous vectors with an exact density; 20000 train / 2000 test samples
drawn once with fixed keys; the label of a sample is its mixture component (8 classes).
No feature network: vector samples have no FID (their KL is computed from the density).
"""

from __future__ import annotations

import types
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np

import mixture
from datasets.base import InMemorySource, register_source
from errors import config_error

TOY_NUM_TRAIN = 20000
TOY_NUM_TEST = 2000
TOY_SEEDS = {'train': 0, 'test': 1}


def toy_distribution(config: ml_collections.ConfigDict) -> mixture.GaussianMixture:
    """The TOY data density: ``mixture.ring_mixture(dim=data.dim)``, exact log p and score."""
    return mixture.ring_mixture(dim=int(config.data.dim))


@register_source
class ToyData(InMemorySource):
    """Samples of the ring mixture, float32 ``[n, data.dim]``, labelled by component."""

    name = 'TOY'
    labels_from = 'the mixture component'
    feature_net = None

    def shape(self, config: ml_collections.ConfigDict) -> Tuple[int, ...]:
        return (int(config.data.dim),)

    def is_continuous(self, config: ml_collections.ConfigDict) -> bool:
        return True

    def classes(self, config: ml_collections.ConfigDict) -> Optional[int]:
        return len(toy_distribution(config).weights)

    def check(self, config: ml_collections.ConfigDict) -> None:
        if config.data.dim < 1:
            raise config_error(
                'data.dim', config.data.dim, 'must be at least 1 for the TOY vector data'
            )
        super().check(config)

    def info(self, config: ml_collections.ConfigDict) -> Dict[str, Any]:
        return {
            'source': 'datasets.toy_distribution',
            'seeds': TOY_SEEDS,
            'num_train': TOY_NUM_TRAIN,
            'num_test': TOY_NUM_TEST,
        }

    def load_split(self, data: types.SimpleNamespace, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """Samples float32 ``[n, dim]`` of the ring mixture and their components int32."""
        n = TOY_NUM_TRAIN if split == 'train' else TOY_NUM_TEST
        key = jax.random.PRNGKey(TOY_SEEDS[split])
        with jax.default_device(jax.devices('cpu')[0]):
            x, k = mixture.ring_mixture(dim=data.dim).sample_with_components(key, n)
            return np.asarray(x, np.float32), np.asarray(k, np.int32)
