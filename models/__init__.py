"""Score networks (flax.linen), selected by ``config.model.name`` through a registry.

Importing the package registers every model: ``ncsnpp`` (NCSN++ / DDPM++), ``ddpm``
(score_sde's DDPM; ``ddpm_ho``: Ho et al.'s attention layout of it),
``ncsnv2_64`` / ``ncsnv2_128`` / ``ncsnv2_256`` and ``mlp``.  Use
``models.utils.create_model(config)`` / ``init_model(rng, config)`` to build one and
``models.utils.get_score_fn(sde, model, variables, ...)`` to turn it into a score
function.

Importing it also registers the noise-conditional classifiers p_t(y | x) of
``models.wideresnet_noise_conditional`` (``wideresnet_noise_conditional`` and ``mlp``, a
separate registry); build one with ``models.utils.create_classifier(config, num_classes)``
/ ``init_classifier(rng, config, num_classes, input_shape)``.

And the variational dequantizers q(u | x̄) of ScoreFlow (a third registry, names from
``config.deq.name``): ``flowpp`` (``models.flowpp``, the original's Flow++) and
``affine_coupling`` (``models.affine_coupling``); ``create_dequantizer(config)``.
"""

from models import (  # noqa: F401  (registers models, classifiers and dequantizers)
    affine_coupling,
    ddpm,
    flowpp,
    mlp,
    ncsnpp,
    ncsnv2,
    utils,
    wideresnet_noise_conditional,
)
from models.utils import (  # noqa: F401
    ClassifierConfig,
    ModelConfig,
    create_classifier,
    create_model,
    get_model_fn,
    get_score_fn,
    get_sigmas,
    init_classifier,
    init_model,
    param_count,
    register_classifier,
    register_dequantizer,
    register_model,
)
