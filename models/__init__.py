"""Score networks (flax.linen), selected by ``config.model.name`` through a registry.

Importing the package registers every model: ``ncsnpp`` (NCSN++ / DDPM++), ``ddpm``,
``ncsnv2_64`` / ``ncsnv2_128`` / ``ncsnv2_256`` and ``mlp``.  Use
``models.utils.create_model(config)`` / ``init_model(rng, config)`` to build one and
``models.utils.get_score_fn(sde, model, variables, ...)`` to turn it into a score
function.
"""

from models import ddpm, mlp, ncsnpp, ncsnv2, utils  # noqa: F401  (registers models)
from models.utils import (  # noqa: F401
    ModelConfig,
    create_model,
    get_model_fn,
    get_score_fn,
    get_sigmas,
    init_model,
    param_count,
    register_model,
)
