"""Model registry, typed model config, initialisation and the score-function adapter.

``create_model(config)`` turns the ``config.model`` section (plus the few data and
training fields a network needs) into a frozen :class:`ModelConfig`, validating every
option (an unknown value raises :class:`errors.UserError` naming the field), and builds
the registered ``flax.linen`` module.  Models are called as
``model.apply(variables, x, labels, train=bool, rngs={'dropout': key})``.

``get_score_fn`` maps a model to a score function ``s(x, t)`` with the paper's
conventions, stated by each SDE class (``sde_lib.SDE.network_inputs``):

| SDE            | labels passed to the net      | score                         |
|----------------|-------------------------------|-------------------------------|
| VP, sub-VP, continuous | 999·t                 | −out / σ(t)                   |
| VP, discrete   | t (N−1) (float, as the original) | −out / √(1 − ᾱ_i), i = ⌊t (N−1)⌋ |
| VE, continuous | σ(t)                          | out                           |
| VE, discrete   | N−1−i, i = ⌊t (N−1)/T + 10⁻⁴⌋ (int32) | out (σ table index, descending) |

Noise-conditional classifiers p_t(y | x(t)) (for class-guided sampling) have their own
registry (``register_classifier`` / ``get_classifier``, names from ``config.classifier.name``):
``create_classifier(config, num_classes)`` / ``init_classifier(rng, config, num_classes,
input_shape)`` build them from the ``config.classifier`` section (:class:`ClassifierConfig`).
They are called as ``classifier.apply(variables, x, sigmas, train=False)`` with σ the
marginal std of p_0t(x(t) | x(0)) (see ``models/wideresnet_noise_conditional.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple, Type

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

import sde_lib
from errors import UserError

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]
ScoreFn = Callable[[Array, Array], Array]


class _Registry:
    """Flax module classes by name, for one config field (``config.<kind>.name``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.classes: Dict[str, Type[nn.Module]] = {}

    def register(self, name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
        def decorator(cls: Type[nn.Module]) -> Type[nn.Module]:
            if name in self.classes:
                raise ValueError(f'A {self.kind} named {name!r} is already registered.')
            self.classes[name] = cls
            return cls

        return decorator

    def get(self, name: str) -> Type[nn.Module]:
        if name not in self.classes:
            raise UserError(
                f'config.{self.kind}.name={name!r} is not a known {self.kind}; use one of '
                f'{", ".join(sorted(self.classes))}.'
            )
        return self.classes[name]


_MODELS = _Registry('model')  # score networks, config.model.name
_CLASSIFIERS = _Registry('classifier')  # noise-conditional classifiers, config.classifier.name
_DEQUANTIZERS = _Registry('deq')  # variational dequantizers q(u | x̄), config.deq.name


# ------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------
def register_model(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: registers a model class under ``config.model.name``."""
    return _MODELS.register(name)


def get_model(name: str) -> Type[nn.Module]:
    """The model class registered under ``name``."""
    return _MODELS.get(name)


def registered_models() -> Tuple[str, ...]:
    """Names of all registered models."""
    return tuple(sorted(_MODELS.classes))


def register_classifier(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: registers a noise-conditional classifier under
    ``config.classifier.name``."""
    return _CLASSIFIERS.register(name)


def get_classifier(name: str) -> Type[nn.Module]:
    """The classifier class registered under ``name``."""
    return _CLASSIFIERS.get(name)


def registered_classifiers() -> Tuple[str, ...]:
    """Names of all registered classifiers."""
    return tuple(sorted(_CLASSIFIERS.classes))


def register_dequantizer(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: registers a variational dequantizer flow under ``config.deq.name``."""
    return _DEQUANTIZERS.register(name)


def registered_dequantizers() -> Tuple[str, ...]:
    """Names of all registered dequantizer flows."""
    return tuple(sorted(_DEQUANTIZERS.classes))


def create_dequantizer(config: Any) -> nn.Module:
    """The flow named by ``config.deq.name`` with the fields of ``config.deq`` its class
    declares (Flow++: filters, components, blocks, attn_heads, dropout, layout)."""
    section = config.deq
    cls = _DEQUANTIZERS.get(section.name)
    declared = {f.name for f in dataclasses.fields(cls)} - {'name', 'parent'}
    if float(section.dropout) > 0 and 'dropout' not in declared:
        raise UserError(
            f'config.deq.dropout={section.dropout} is not supported by the '
            f"{section.name!r} dequantizer; set it to 0 or use config.deq.name='flowpp'."
        )
    return cls(**{k: section[k] for k in declared if k in section})


# ------------------------------------------------------------------------------------
# Typed, frozen model config
# ------------------------------------------------------------------------------------
_CHOICES = {
    'resblock_type': ('ddpm', 'biggan'),
    'progressive': ('none', 'output_skip', 'residual'),
    'progressive_input': ('none', 'input_skip', 'residual'),
    'progressive_combine': ('sum', 'cat'),
    'attention_type': ('ddpm',),
    'embedding_type': ('fourier', 'positional'),
    'normalization': ('groupnorm', 'instancenorm', 'instancenorm++', 'variancenorm'),
    'nonlinearity': ('elu', 'relu', 'lrelu', 'swish'),
    'interpolation': ('bilinear', 'nearest_neighbor'),
    'parameterization': sde_lib.PARAMETERIZATIONS,
}
# Fields read from other config sections than config.model.
_SECTION = {
    'image_size': 'data',
    'num_channels': 'data',
    'centered': 'data',
    'dim': 'data',
    'continuous': 'training',
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything a score network reads from the config, typed and validated.

    Field names are those of ``config.model`` in the Score SDE configs; ``image_size``,
    ``num_channels``, ``centered`` and ``dim`` (vector data) come from ``config.data``,
    ``continuous`` from ``config.training``.  ``trainable_embedding`` (score_flow's name) lets the
    Fourier-feature frequencies W train (the original keeps them fixed).
    String options are stored lower-case.
    """

    name: str = 'ncsnpp'
    nf: int = 128
    ch_mult: Tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: Tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)
    skip_rescale: bool = True
    resblock_type: str = 'biggan'
    progressive: str = 'none'
    progressive_input: str = 'none'
    progressive_combine: str = 'sum'
    attention_type: str = 'ddpm'
    embedding_type: str = 'fourier'
    fourier_scale: float = 16.0
    trainable_embedding: bool = False
    init_scale: float = 0.0
    scale_by_sigma: bool = False
    parameterization: str = 'score'
    normalization: str = 'groupnorm'
    nonlinearity: str = 'swish'
    conv_size: int = 3
    interpolation: str = 'bilinear'
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0
    ema_rate: float = 0.9999
    image_size: int = 32
    num_channels: int = 3
    centered: bool = False
    dim: int = 2
    continuous: bool = True

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(
                self, field.name, _coerce(field.name, field.type, getattr(self, field.name))
            )
        self._check_ranges()

    def _check_ranges(self) -> None:
        positive = (
            'nf',
            'num_scales',
            'image_size',
            'num_channels',
            'dim',
            'sigma_min',
            'sigma_max',
            'fourier_scale',
        )
        for name in positive:
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), 'must be positive')
        if self.num_res_blocks < 0:
            _fail('num_res_blocks', self.num_res_blocks, 'must be ≥ 0')
        if not self.ch_mult or min(self.ch_mult) <= 0:
            _fail('ch_mult', self.ch_mult, 'must be a non-empty tuple of positive ints')
        if not 0.0 <= self.dropout < 1.0:
            _fail('dropout', self.dropout, 'must lie in [0, 1)')
        if self.init_scale < 0:
            _fail('init_scale', self.init_scale, 'must be ≥ 0')
        if self.conv_size != 3:
            _fail('conv_size', self.conv_size, 'is not supported; use 3')
        if self.sigma_max <= self.sigma_min:
            _fail('sigma_max', self.sigma_max, f'must exceed sigma_min={self.sigma_min}')
        if self.fir and (len(self.fir_kernel) < 2 or sum(self.fir_kernel) == 0):
            _fail('fir_kernel', self.fir_kernel, 'needs ≥ 2 taps with a non-zero sum')

    @classmethod
    def from_config(cls, config: Any) -> ModelConfig:
        """Reads the fields from a full ml_collections config (absent fields: defaults).

        Fields of ``config.model`` that no model reads are ignored.
        """
        if isinstance(config, ModelConfig):
            return config
        values = {}
        for field in dataclasses.fields(cls):
            section = getattr(config, _SECTION.get(field.name, 'model'), None)
            if section is not None and field.name in section:
                values[field.name] = section[field.name]
        return cls(**values)

    @property
    def num_resolutions(self) -> int:
        return len(self.ch_mult)


def _fail(name: str, value: Any, problem: str) -> None:
    section = _SECTION.get(name, 'model')
    raise UserError(f'config.{section}.{name}={value!r} {problem}.')


def _is_int(value: Any) -> bool:
    """True for integers and integral floats (not bools, not strings)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return False
    return float(value).is_integer()


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Checks the type of one field (ints stay ints, tuples of ints, known strings)."""
    kind = kind if isinstance(kind, str) else getattr(kind, '__name__', str(kind))
    if kind == 'bool':
        if not isinstance(value, (bool, np.bool_)):
            _fail(name, value, 'must be True or False')
        return bool(value)
    if kind == 'int':
        if not _is_int(value):
            _fail(name, value, 'must be an integer')
        return int(value)
    if kind == 'float':
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            _fail(name, value, 'must be a number')
        return float(value)
    if kind.startswith('Tuple'):
        floats = 'float' in kind
        what = 'a tuple of numbers' if floats else 'a tuple of integers'
        if isinstance(value, (str, bytes)) or not hasattr(value, '__iter__'):
            _fail(name, value, f'must be {what}')
        items = tuple(value)
        ok = (lambda v: _is_int(v) or isinstance(v, (float, np.floating))) if floats else _is_int
        if not all(ok(v) and not isinstance(v, (bool, np.bool_)) for v in items):
            _fail(name, value, f'must be {what}')
        return tuple(float(v) if floats else int(v) for v in items)
    if not isinstance(value, str):
        _fail(name, value, 'must be a string')
    value = value.lower() if name != 'name' else value
    if name in _CHOICES and value not in _CHOICES[name]:
        _fail(name, value, f'is not supported; use one of {", ".join(map(repr, _CHOICES[name]))}')
    return value


# ------------------------------------------------------------------------------------
# Construction and initialisation
# ------------------------------------------------------------------------------------
def create_model(config: Any) -> nn.Module:
    """The flax module named by ``config.model.name``, built from its typed config."""
    cfg = ModelConfig.from_config(config)
    cls = get_model(cfg.name)
    check = getattr(cls, 'check_config', None)
    if check is not None:
        check(cfg)
    return cls(config=cfg)


def input_shape(config: Any, batch_size: int = 1) -> Tuple[int, ...]:
    """Shape of a model input batch: [B, H, W, C] images, or [B, dim] for vector models."""
    cfg = ModelConfig.from_config(config)
    if getattr(get_model(cfg.name), 'vector_input', False):
        return (batch_size, cfg.dim)
    return (batch_size, cfg.image_size, cfg.image_size, cfg.num_channels)


# Initialisation runs once; compiling it without XLA's backend optimisation takes a
# quarter of the time (the per-parameter threefry code dominates) and gives the same values.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


@functools.lru_cache(maxsize=16)
def _init_fn(cfg: ModelConfig) -> Tuple[nn.Module, Callable[[Array], Dict[str, Any]]]:
    """The model and its jitted ``init(key) -> variables`` (cached per config)."""
    model = create_model(cfg)
    shape = input_shape(cfg)

    def init(key: Array) -> Dict[str, Any]:
        x = jnp.zeros(shape, jnp.float32)
        return model.init({'params': key}, x, jnp.ones((1,), jnp.float32), train=False)

    return model, jax.jit(init, compiler_options=INIT_COMPILER_OPTIONS)


def init_model(rng: Array, config: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """Builds the model and initialises ``variables = {'params': ...}`` from ``rng``."""
    model, init = _init_fn(ModelConfig.from_config(config))
    return model, dict(init(rng))


def init_shapes(config: Any) -> Dict[str, Any]:
    """The variables' shapes (``jax.ShapeDtypeStruct``s) without allocating anything."""
    model = create_model(config)
    x = jax.ShapeDtypeStruct(input_shape(model.config), jnp.float32)
    labels = jax.ShapeDtypeStruct((1,), jnp.float32)
    return jax.eval_shape(
        lambda key, x, y: model.init({'params': key}, x, y, train=False),
        jax.random.PRNGKey(0),
        x,
        labels,
    )


# ------------------------------------------------------------------------------------
# Noise-conditional classifiers
# ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The ``config.classifier`` section, typed and validated (absent fields: defaults).

    ``blocks_per_group`` / ``channel_multiplier`` size the Wide ResNet (4 / 10: WRN-28-10,
    the Score SDE CIFAR-10 classifier), ``nf`` / ``num_layers`` the MLP; both embed log σ
    with ``embedding_type`` ('fourier': Gaussian Fourier features of scale
    ``fourier_scale``; 'positional': sinusoidal).  A class receives the fields it declares.
    """

    name: str = 'wideresnet_noise_conditional'
    blocks_per_group: int = 4
    channel_multiplier: int = 10
    embedding_type: str = 'fourier'
    fourier_scale: float = 16.0
    nf: int = 256
    num_layers: int = 3

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _coerce_classifier(field.name, field.type, value))

    @classmethod
    def from_config(cls, config: Any) -> ClassifierConfig:
        """Reads ``config.classifier`` of a full ml_collections config; unknown fields of
        that section are ignored."""
        if isinstance(config, ClassifierConfig):
            return config
        section = getattr(config, 'classifier', None)
        values = {}
        if section is not None:
            for field in dataclasses.fields(cls):
                if field.name in section:
                    values[field.name] = section[field.name]
        return cls(**values)


def _coerce_classifier(name: str, kind: Any, value: Any) -> Any:
    """Checks one field of :class:`ClassifierConfig` (errors name ``config.classifier``)."""
    kind = kind if isinstance(kind, str) else getattr(kind, '__name__', str(kind))

    def fail(problem: str) -> None:
        raise UserError(f'config.classifier.{name}={value!r} {problem}.')

    if kind == 'int':
        if not _is_int(value):
            fail('must be an integer')
        if int(value) <= 0:
            fail('must be positive')
        return int(value)
    if kind == 'float':
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            fail('must be a number')
        if not float(value) > 0:
            fail('must be positive')
        return float(value)
    if not isinstance(value, str):
        fail('must be a string')
    if name == 'embedding_type':
        value = value.lower()
        if value not in _CHOICES['embedding_type']:
            fail(f'is not supported; use one of {", ".join(map(repr, _CHOICES[name]))}')
    return value


def create_classifier(config: Any, num_classes: int) -> nn.Module:
    """The classifier named by ``config.classifier.name``, with ``num_outputs =
    num_classes`` and the other fields of ``config.classifier`` that its class declares."""
    cfg = ClassifierConfig.from_config(config)
    cls = get_classifier(cfg.name)
    if not _is_int(num_classes) or int(num_classes) <= 0:
        raise UserError(f'num_classes={num_classes!r} must be a positive integer.')
    declared = {f.name for f in dataclasses.fields(cls)}
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in declared}
    return cls(num_outputs=int(num_classes), **kwargs)


@functools.lru_cache(maxsize=16)
def _classifier_init_fn(
    cfg: ClassifierConfig, num_classes: int, shape: Tuple[int, ...]
) -> Tuple[nn.Module, Callable[[Array], Dict[str, Any]]]:
    """The classifier and its jitted ``init(key) -> variables`` (cached per config)."""
    model = create_classifier(cfg, num_classes)
    rank = getattr(type(model), 'input_rank', None)
    if rank is not None and len(shape) != rank:
        raise UserError(
            f'config.classifier.name={cfg.name!r} reads inputs of rank {rank}; '
            f'got input_shape={shape}.'
        )

    def init(key: Array) -> Dict[str, Any]:
        x = jnp.zeros(shape, jnp.float32)
        return model.init({'params': key}, x, jnp.ones(shape[:1], jnp.float32), train=False)

    return model, jax.jit(init, compiler_options=INIT_COMPILER_OPTIONS)


def init_classifier(
    rng: Array, config: Any, num_classes: int, input_shape: Tuple[int, ...]
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Builds the classifier and initialises ``variables = {'params': ...}`` from ``rng``
    for inputs of ``input_shape`` ([B, H, W, C] images or [B, D] vectors)."""
    shape = tuple(int(d) for d in input_shape)
    model, init = _classifier_init_fn(ClassifierConfig.from_config(config), num_classes, shape)
    return model, dict(init(rng))


def param_count(variables: Any) -> int:
    """Number of parameters (scalars) in ``variables['params']`` (or any pytree);
    works on arrays and on ``jax.ShapeDtypeStruct``s."""
    tree = variables.get('params', variables) if isinstance(variables, dict) else variables
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))


def get_sigmas(config: Any) -> np.ndarray:
    """VE noise scales exp(linspace(log σ_max, log σ_min, num_scales)), descending."""
    cfg = ModelConfig.from_config(config)
    return np.exp(np.linspace(np.log(cfg.sigma_max), np.log(cfg.sigma_min), cfg.num_scales)).astype(
        np.float32
    )


# ------------------------------------------------------------------------------------
# Adapters: model → model_fn(x, labels) → score_fn(x, t)
# ------------------------------------------------------------------------------------
PRECISIONS = ('float32', 'bfloat16')  # config.training.precision


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


# Parameters kept in float32 under mixed precision: the Fourier frequencies W (|2π W log σ|
# reaches ~10³ rad, far beyond bfloat16's 8 bits).
_FLOAT32_SCOPES = ('GaussianFourierProjection',)


def _cast_params(variables: Any, dtype: Any) -> Any:
    """``variables`` with every floating leaf in ``dtype`` except under _FLOAT32_SCOPES."""
    flat = traverse_util.flatten_dict(variables)
    return traverse_util.unflatten_dict(
        {
            path: leaf
            if any(str(p).startswith(_FLOAT32_SCOPES) for p in path)
            else _cast_floats(leaf, dtype)
            for path, leaf in flat.items()
        }
    )


def _is_root(module: nn.Module) -> bool:
    """Whether ``module`` is the network being applied (bound to a scope, not a parent)."""
    return not isinstance(module.parent, nn.Module)


def _compute_in(dtype: Any):
    """A flax method interceptor: every submodule's floating inputs are cast to ``dtype``,
    so that with parameters in ``dtype`` every layer computes in it.

    Left as they are: the network's own arguments (its ``labels`` stay float32, so the
    time embedding 999·t or the Fourier features of log σ are computed from the exact
    label; the caller casts ``x``) and the inputs of modules with ``keeps_float32_inputs``
    (the Fourier features, whose phase 2π W log σ needs float32)."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (
            context.method_name != '__call__'
            or _is_root(module)
            or getattr(module, 'keeps_float32_inputs', False)
        ):
            return next_fun(*args, **kwargs)
        return next_fun(*_cast_floats(args, dtype), **_cast_floats(kwargs, dtype))

    return interceptor


def get_model_fn(
    model: nn.Module,
    variables: Dict[str, Any],
    train: bool = False,
    rng: Optional[Array] = None,
    precision: str = 'float32',
) -> ModelFn:
    """``model_fn(x, labels)`` = the network output; with ``train`` dropout is active and
    draws from ``rng``.

    ``precision='bfloat16'`` is mixed precision: the network computes in bfloat16 (its
    parameters, ``x`` and every layer's inputs cast to it; the labels stay float32, so
    the time or noise-level embedding is computed from the exact label before its first
    layer; normalisation statistics and the attention softmax are float32 inside their
    layers) while the parameters, their gradients and the output (cast back) are float32.
    """
    rngs = {'dropout': rng} if rng is not None else {}
    if precision not in PRECISIONS:
        raise UserError(f'config.training.precision={precision!r} is not one of {PRECISIONS}.')

    def model_fn(x: Array, labels: Array) -> Array:
        if precision == 'float32':
            return model.apply(variables, x, labels, train=train, rngs=rngs)
        with nn.intercept_methods(_compute_in(jnp.bfloat16)):
            out = model.apply(
                _cast_params(variables, jnp.bfloat16),
                x.astype(jnp.bfloat16),
                labels,
                train=train,
                rngs=rngs,
            )
        return out.astype(jnp.float32)

    return model_fn


def get_score_fn(
    sde: sde_lib.SDE,
    model: nn.Module,
    variables: Dict[str, Any],
    train: bool = False,
    continuous: bool = True,
    rng: Optional[Array] = None,
    precision: str = 'float32',
) -> ScoreFn:
    """The score ``s_θ(x, t) = scale(t) · net(x, labels(t))`` of a network trained with the
    paper's conventions, which the SDE states (``sde.network_inputs``; module docstring);
    the network computes in ``precision`` (:func:`get_model_fn`), the score is float32.

    A model whose config has ``parameterization='velocity'`` predicts i-DODE's velocity
    v̂ (continuous labels): ``s_θ = a(t) · net + b(t) · x``
    (:meth:`sde_lib.SDE.velocity_coefficients`)."""
    model_fn = get_model_fn(model, variables, train=train, rng=rng, precision=precision)

    if getattr(getattr(model, 'config', None), 'parameterization', 'score') == 'velocity':

        def velocity_score_fn(x: Array, t: Array) -> Array:
            labels, _ = sde.continuous_network_inputs(t)
            a, b = sde.velocity_coefficients(t)
            return sde_lib.batch_mul(a, model_fn(x, labels)) + sde_lib.batch_mul(b, x)

        return velocity_score_fn

    def score_fn(x: Array, t: Array) -> Array:
        labels, scale = sde.network_inputs(t, continuous)
        return sde_lib.batch_mul(scale, model_fn(x, labels))

    return score_fn
