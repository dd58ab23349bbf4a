"""Measurements on a trained run that ``--mode eval`` does not make (ScoreFlow's table in
miniature, ``scripts/scoreflow_table.py``), read from the run's work directory W.

* The variance of the likelihood-weighted DSM loss with t ~ U(ε, T) and with
  importance-sampled t ~ p(t) ∝ g²/σ² on a snapshot (:func:`loss_variance`,
  :func:`measure_run_variance`): the mechanism of ScoreFlow's importance sampling.
* The variance of the training *gradient* per batch with each weighting of t (σ², λ = g²
  with t ~ U, λ = g² with importance-sampled t) on a snapshot, and how often gradient
  clipping fires at each objective's own scale (:func:`gradient_variance`,
  :func:`measure_run_gradients`): where the mechanism acts, the parameter update.
* KL(data ‖ model) of TOY runs (:class:`ToyKL`): TOY data have an exact density, so
  KL = E_x[log p_data(x) + nll(x)] over the test points, from the per-example nll of an
  evaluation (the ODE's, or the bound's: an upper bound on KL up to Monte Carlo noise).
* Two evaluations of the same images compared image by image (:func:`paired_over_images`):
  runs of one seed see the same dequantization noise and probes (``eval_quantities``), so
  their difference has the standard error of the per-image differences, far below that of
  either mean (the high-order fine-tuning of docs/results.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

import checkpointing
import datasets
import eval_store
import losses
import sde_lib
from devices import local_mesh
from file_io import load_npz, read_json
from models import utils as mutils
from train_state import create_train_state


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config ``W/config.json`` of a run (written by ``main.py``)."""
    config = read_json(os.path.join(workdir, 'config.json'))
    if config is None:
        raise FileNotFoundError(os.path.join(workdir, 'config.json'))
    return ml_collections.ConfigDict(config)


# --------------------------------------------------------------------------- loss variance
ESTIMATORS = ('uniform', 'importance')


def loss_variance(
    sde,
    score_fn,
    x,
    key,
    *,
    eps: float,
    reduce_mean: bool = True,
    batch_size: int = 128,
    num_bins: int = 10,
    chunk: int = 512,
) -> Dict[str, Any]:
    """Variance of the likelihood-weighted DSM loss with uniform vs importance-sampled t.

    Both estimators are ``losses.dsm_loss`` per example on the same data ``x`` [N, ...]
    (model space) and the same ``score_fn``:

    * 'uniform': weighting 'likelihood' (t ~ U(ε, T), weight g²/σ²) times (T − ε);
    * 'importance': weighting 'importance' with ``importance_normalizer=True``
      (t ~ p(t) = g²/(σ² Z), weight Z);

    so that both are unbiased for I = ∫_ε^T g² E‖s(x_t, t) + z/σ‖² dt (reduced as in
    training: mean over dimensions with ``reduce_mean``, else half the sum). The paper's
    training drops the constant Z (loss = I / Z) and the uniform one has I / (T − ε); these
    scale each variance by a constant and do not change which is smaller at equal mean.

    Returns, per estimator, the statistics of :func:`estimator_stats` over t-bins
    ``bin_edges`` (log-spaced on [ε, T]). Also ``ratio`` = var(uniform) /
    var(importance), and for the uniform estimator ``var_from_importance_draws``: its
    variance from the importance-sampled draws reweighted (:func:`reweighted_uniform_var`),
    the more reliable value when ε is small (its plain sample variance is dominated by
    rare small t), and ``ratio_from_importance_draws``.
    """
    T = float(sde.T)
    edges = np.geomspace(eps, T, num_bins + 1)
    settings = {
        'uniform': ('likelihood', False, T - eps),
        'importance': ('importance', True, 1.0),
    }
    out: Dict[str, Any] = {
        'num_draws': int(x.shape[0]),
        'batch_size': int(batch_size),
        'eps': float(eps),
        'T': T,
        'bin_edges': edges.tolist(),
    }
    draws: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for e_index, name in enumerate(ESTIMATORS):
        fn = per_example_loss_fn(sde, score_fn, eps, reduce_mean, *settings[name])
        draws[name] = _draw(fn, x, jax.random.fold_in(key, e_index), chunk)
        out[name] = estimator_stats(*draws[name], edges, batch_size)
    var, stderr = reweighted_uniform_var(sde, *draws['importance'], eps)
    out['uniform']['var_from_importance_draws'] = var
    out['uniform']['var_from_importance_draws_stderr'] = stderr
    out['ratio'] = out['uniform']['var'] / out['importance']['var']
    out['ratio_from_importance_draws'] = var / out['importance']['var']
    return out


def per_example_loss_fn(
    sde, score_fn, eps: float, reduce_mean: bool, weighting: str, normalizer: bool, scale: float
) -> Callable:
    """Jitted (key, x [B, ...]) → (scale · ``losses.dsm_loss`` per example [B], its t [B]):
    the loss's own times are recorded from the score function's calls, for the binning."""

    def per_example(k, xb):
        times = []

        def recording_score(x_t, t):
            times.append(t)
            return score_fn(x_t, t)

        loss = losses.dsm_loss(
            k,
            recording_score,
            xb,
            sde,
            reduce_mean=reduce_mean,
            weighting=weighting,
            eps=eps,
            importance_normalizer=normalizer,
        )
        return scale * loss, times[0]

    return jax.jit(per_example)


def _draw(fn: Callable, x, key, chunk: int) -> Tuple[np.ndarray, np.ndarray]:
    """``fn`` over ``x`` in chunks (chunk c with key fold_in(key, c)): (values, t), float64."""
    values, times = [], []
    for c, start in enumerate(range(0, int(x.shape[0]), chunk)):
        v, t = fn(jax.random.fold_in(key, c), jnp.asarray(x[start : start + chunk]))
        values.append(np.asarray(v, np.float64))
        times.append(np.asarray(t, np.float64))
    return np.concatenate(values), np.concatenate(times)


def estimator_stats(
    v: np.ndarray, t: np.ndarray, edges: np.ndarray, batch_size: int
) -> Dict[str, Any]:
    """Statistics of n per-example losses L = ``v`` drawn at times ``t``.

    ``mean`` and ``mean_stderr`` = √(var/n); ``var`` (ddof 1) and its standard error
    √((m₄ − var²)/n) (m₄ the fourth central moment); ``batch_var`` = var / ``batch_size``
    (the variance of a training batch's mean loss), ``batch_var_empirical`` (over the
    n / batch_size disjoint batches of the draws, None with fewer than two),
    ``relative_std`` = √var / |mean|; and per t-bin of ``edges``: ``bin_count``,
    ``bin_mean`` (the bin's contribution E[L 1{t ∈ bin}], the same for both estimators up
    to noise) and ``bin_second_moment`` (E[L² 1{t ∈ bin}]; they sum to E[L²] = var·(n−1)/n
    + mean²).
    """
    n, num_bins = len(v), len(edges) - 1
    mean, var = float(v.mean()), float(v.var(ddof=1))
    m4 = float(np.mean((v - mean) ** 4))
    num_batches = n // batch_size
    batch_means = v[: num_batches * batch_size].reshape(num_batches, batch_size).mean(1)
    which = np.clip(np.searchsorted(edges, t, side='right') - 1, 0, num_bins - 1)
    return {
        'mean': mean,
        'mean_stderr': math.sqrt(var / n),
        'var': var,
        'var_stderr': math.sqrt(max(m4 - var**2, 0.0) / n),
        'batch_var': var / batch_size,
        'batch_var_empirical': float(batch_means.var(ddof=1)) if num_batches > 1 else None,
        'relative_std': math.sqrt(var) / abs(mean) if mean else None,
        'bin_count': np.bincount(which, minlength=num_bins).tolist(),
        'bin_mean': (np.bincount(which, v, num_bins) / n).tolist(),
        'bin_second_moment': (np.bincount(which, v**2, num_bins) / n).tolist(),
    }


def reweighted_uniform_var(
    sde, l_is: np.ndarray, t_is: np.ndarray, eps: float
) -> Tuple[float, float]:
    """The uniform-t estimator's variance from the importance-sampled draws, ± its error.

    With L_U = (T − ε) w(t) h and L_IS = Z h (w = g²/σ², Z = ∫_ε^T w dt),
    E_U[L_U²] = E_p[r(t) L_IS²] with r = (T − ε) w / Z, and both means are I, so
    var_U = mean(r L_IS²) − mean(L_IS)², with standard error std(r L_IS²)/√n. Its tail at
    small t is sampled densely there, where uniform t rarely goes: at ε = 1e-5 the plain
    sample variance of L_U falls far short of the true one (heavy tail: E_U[L_U⁴] grows
    like 1/ε³), this one much less.
    """
    T = float(sde.T)
    with jax.ensure_compile_time_eval():
        z_norm = float(sde.likelihood_importance_cum_weight(jnp.asarray(T), eps))
    t = jnp.asarray(t_is, jnp.float32)
    r = np.asarray((T - eps) * sde.diffusion(t) ** 2 / sde.std(t) ** 2, np.float64) / z_norm
    second = r * l_is**2
    return (
        float(second.mean() - l_is.mean() ** 2),
        float(second.std(ddof=1) / math.sqrt(len(l_is))),
    )


def measure_run_variance(
    workdir: str, ckpt: int, num_draws: int = 4096, seed: int = 0
) -> Dict[str, Any]:
    """:func:`loss_variance` on snapshot ``ckpt`` of a run (EMA parameters, no dropout) and
    ``num_draws`` training examples (:func:`training_draws`); the result also holds
    ``ckpt``, the snapshot's ``step`` and ``seed``."""
    config = load_run_config(workdir)  # resolved and validated by main.py
    sde = sde_lib.get_sde(config)
    model, _, template = create_train_state(config, local_mesh())
    state = checkpointing.restore_checkpoint(workdir, ckpt, template)
    score_fn = mutils.get_score_fn(
        sde, model, {'params': state.ema_params}, train=False, continuous=True
    )
    key = jax.random.key(seed)
    result = loss_variance(
        sde,
        score_fn,
        training_draws(config, num_draws, seed, key),
        jax.random.fold_in(key, 1 << 20),
        eps=float(config.training.eps),
        reduce_mean=bool(config.training.reduce_mean),
        batch_size=int(config.training.batch_size),
    )
    result.update({'ckpt': int(ckpt), 'step': int(state.step), 'seed': int(seed)})
    return result


def training_draws(config, num_draws: int, seed: int, key) -> np.ndarray:
    """``num_draws`` training examples drawn with replacement (NumPy generator ``seed``),
    dequantized and scaled as in training, example i with key fold_in(``key``, i)."""
    data = datasets.DataSpec.from_config(config)
    raw = datasets.get_shard(config, 'train', process_index=0, process_count=1).data
    rows = raw[np.random.default_rng(seed).integers(0, len(raw), num_draws)]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(np.arange(num_draws, dtype=np.uint32))
    return np.asarray(data.train_input(jnp.asarray(rows), keys))


# --------------------------------------------------------------------------- gradients
def gradient_variance(
    loss_fns: Dict[str, Callable],
    params: Any,
    batches: np.ndarray,
    key,
    *,
    scales: Dict[str, float],
    clip: float,
) -> Dict[str, Any]:
    """Per-batch gradient statistics of several training losses on the same batches.

    ``loss_fns[name](rng, params, batch) -> scalar`` is a training objective at its own
    scale; batch b (``batches[b]``) is drawn with ``fold_in(key, b)`` for every loss (the
    same data, paired). With g_b the gradient and n batches, per loss:

    * ``norm_median``, ``norm_p90``, ``norm_max`` of ‖g_b‖ and ``clip_fraction``: the
      fraction of batches with ‖g_b‖ > ``clip`` (where global-norm clipping fires in
      training, ``optim.grad_clip``);
    * ``trace_var`` = Σ_b ‖g_b − ḡ‖² / (n − 1), the total variance of one batch's
      gradient, and ``norm_of_mean`` = ‖ḡ‖, both at the unbiased scale ``scales[name]`` ·
      g_b (so that losses estimating the same integral compare directly: likelihood
      weighting with t ~ U times (T − ε), importance sampling times Z), with
      ``trace_var_stderr`` from the spread of ‖g_b − ḡ‖² (delta method, ±).
    """
    out: Dict[str, Any] = {'num_batches': int(len(batches)), 'clip': float(clip)}
    for name, loss_fn in loss_fns.items():
        grad_fn = jax.jit(
            lambda rng, batch, f=loss_fn: ravel_pytree(jax.grad(f, 1)(rng, params, batch))[0]
        )
        grads = np.stack(
            [
                np.asarray(grad_fn(jax.random.fold_in(key, b), batch), np.float64)
                for b, batch in enumerate(batches)
            ]
        )
        out[name] = _gradient_stats(grads, float(scales[name]), clip)
    return out


def _gradient_stats(grads: np.ndarray, scale: float, clip: float) -> Dict[str, Any]:
    """Statistics of gradients [n, P] at their own scale (norms, clipping) and at
    ``scale`` (mean and total variance): see :func:`gradient_variance`."""
    grads = np.asarray(grads, np.float64)
    norms = np.linalg.norm(grads, axis=1)
    scaled = grads * scale
    dev2 = np.sum((scaled - scaled.mean(0)) ** 2, axis=1)
    n = len(grads)
    return {
        'norm_median': float(np.median(norms)),
        'norm_p90': float(np.quantile(norms, 0.9)),
        'norm_max': float(norms.max()),
        'clip_fraction': float(np.mean(norms > clip)),
        'norm_of_mean': float(np.linalg.norm(scaled.mean(0))),
        'trace_var': float(dev2.sum() / (n - 1)),
        'trace_var_stderr': float(dev2.std(ddof=1) * n / (n - 1) / math.sqrt(n)),
        'scale': scale,
    }


def weighting_losses(config, sde, model) -> Tuple[Dict[str, Callable], Dict[str, float]]:
    """The training loss of each weighting (``sde_lib.WEIGHTINGS``) with the run's other
    settings (``losses.get_sde_loss_fn``, dropout on), and the factor to the common
    scale of the λ = g² estimators: (T − ε) for 'likelihood', Z = ∫_ε^T g²/σ² dt for
    'importance', 1 for 'sigma2' (another integrand)."""
    base = losses.LossOptions.from_config(config)
    eps, T = base.eps, float(sde.T)
    with jax.ensure_compile_time_eval():
        z_norm = float(sde.likelihood_importance_cum_weight(jnp.asarray(T), eps))
    fns, scales = {}, {'sigma2': 1.0, 'likelihood': T - eps, 'importance': z_norm}
    for name, (lw, iw) in sde_lib.WEIGHTING_FLAGS.items():
        options = dataclasses.replace(base, likelihood_weighting=lw, importance_weighting=iw)
        fns[name] = losses.get_sde_loss_fn(sde, model, train=True, options=options)
    return fns, scales


def measure_run_gradients(
    workdir: str, ckpt: int, num_batches: int = 128, seed: int = 0
) -> Dict[str, Any]:
    """:func:`gradient_variance` of every weighting (:func:`weighting_losses`) on snapshot
    ``ckpt`` of a run: its training parameters (not the EMA), ``num_batches`` batches of
    ``training.batch_size`` training examples (:func:`training_draws`), the run's
    ``optim.grad_clip``; with ``ckpt``, ``step``, ``seed`` and the run's own weighting."""
    config = load_run_config(workdir)
    sde = sde_lib.get_sde(config)
    model, _, template = create_train_state(config, local_mesh())
    state = checkpointing.restore_checkpoint(workdir, ckpt, template)
    batch = int(config.training.batch_size)
    key = jax.random.key(seed)
    draws = training_draws(config, num_batches * batch, seed, key)
    fns, scales = weighting_losses(config, sde, model)
    result = gradient_variance(
        fns,
        state.params,
        draws.reshape((num_batches, batch) + draws.shape[1:]),
        jax.random.fold_in(key, 1 << 20),
        scales=scales,
        clip=float(config.optim.grad_clip),
    )
    own = sde_lib.weighting_of(
        config.training.likelihood_weighting, config.training.importance_weighting
    )
    result.update({'ckpt': int(ckpt), 'step': int(state.step), 'seed': int(seed), 'own': own})
    return result


# --------------------------------------------------------------------------- TOY's KL
# The summary files (``<tag>_h<host>.npz``) holding each per-example nll, in the order
# looked at: the bound's own tag first, then the ODE's (where runs before the bound had
# its own tag kept the bound's results).
NLL_TAGS = {'nll': ('bpd',), 'bound_nll': ('bound', 'bpd')}


class ToyKL:
    """KL(data ‖ model) of TOY runs from the exact log p_data of the test points."""

    def __init__(self):
        self._log_p: Dict[Tuple[int, int], np.ndarray] = {}

    def log_p_data(self, config) -> np.ndarray:
        """log p_data of the test split, by global example index (float64)."""
        key = (int(config.data.dim), int(datasets.split_size(config, 'test')))
        if key not in self._log_p:
            shard = datasets.get_shard(config, 'test', process_index=0, process_count=1)
            mix = datasets.toy_distribution(config)
            # p_0 = p_data: a VP SDE at t = 0 has α = 1 and σ = 0 exactly.
            x = jnp.asarray(shard.data, jnp.float32)
            logp = mix.log_prob(sde_lib.VPSDE(), x, jnp.zeros(len(x)))
            self._log_p[key] = np.asarray(logp, np.float64)
        return self._log_p[key]

    def entry(
        self, workdir: str, folder: str, ckpt: int, metrics: Dict[str, Any], which: str
    ) -> Tuple[float, float]:
        """(KL, its standard error) in nats at ``ckpt`` of ``W/<folder>``, for ``which``:
        'nll' (the ODE) or 'bound_nll' (the bound), nats per example.

        KL = mean nll + mean_x log p_data(x) over the test split: the mean nll from
        ``metrics`` (the checkpoint's metrics.json entry) when it has ``which``, else the
        mean of the per-example file (as metrics.json's). The standard error is paired:
        that of d_i = nll_i + log p_data(x_i) over test images (repeats averaged first),
        nan without the per-example file; both are nan without either.
        """
        logp = self.log_p_data(load_run_config(workdir))
        results = per_example_nll(os.path.join(workdir, folder, f'ckpt_{ckpt}'), which)
        nll_mean, se = metrics.get(which), math.nan
        if results is not None:
            index = np.asarray(results['index'], np.int64)
            nll = np.asarray(results[which], np.float64)
            _, se = eval_store.mean_and_stderr_over_images(nll + logp[index], index)
            nll_mean = float(np.mean(nll)) if nll_mean is None else nll_mean
        if nll_mean is None:
            return math.nan, math.nan
        return nll_mean + float(logp.mean()), se


def paired_over_images(folder_a: str, folder_b: str, key: str, tag: str) -> Dict[str, float]:
    """``key`` (e.g. 'bpd', 'nll', 'nfe') of two evaluations of the same images — the
    ``ckpt_<n>`` folders of two runs, pass ``tag`` ('bpd', 'bound') — and the paired
    difference b − a: {'a', 'a_se', 'b', 'b_se', 'diff', 'diff_se', 'num_images'}, each
    mean with its standard error over images (repeats averaged first,
    ``eval_store.mean_and_stderr_over_images``). The two must hold the same (image,
    repeat) pairs."""
    a, b = (load_per_example(folder, tag) for folder in (folder_a, folder_b))
    if a is None or b is None:
        missing = folder_a if a is None else folder_b
        raise FileNotFoundError(f'no {tag}_h<host>.npz results in {missing}')
    a, b = eval_store.sorted_results(a), eval_store.sorted_results(b)
    pairs = [k for k in ('index', 'repeat') if k in a]
    if any(not np.array_equal(a[k], b.get(k)) for k in pairs):
        raise ValueError(f'{folder_a} and {folder_b} hold different images or repeats')
    index = a['index']
    values = {name: np.asarray(r[key], np.float64) for name, r in (('a', a), ('b', b))}
    out: Dict[str, float] = {'num_images': float(len(np.unique(index)))}
    for name, v in (*values.items(), ('diff', values['b'] - values['a'])):
        out[name], out[f'{name}_se'] = eval_store.mean_and_stderr_over_images(v, index)
    return out


def per_example_nll(folder: str, which: str) -> Optional[eval_store.Results]:
    """The per-example results in ``folder`` (a ``ckpt_<n>`` folder) that hold ``which``
    ('nll' or 'bound_nll', see ``NLL_TAGS``), with their ``index``; None if none does."""
    for tag in NLL_TAGS[which]:
        results = load_per_example(folder, tag)
        if results is not None and which in results:
            return results
    return None


def load_per_example(folder: str, tag: str) -> Optional[eval_store.Results]:
    """The per-example results of an evaluation pass (``<tag>_h<host>.npz``, all hosts)."""
    if not os.path.isdir(folder):
        return None
    store = eval_store.ResultStore(folder)
    parts, host = [], 0
    while (part := load_npz(store.summary_path(tag, host))) is not None:
        parts.append(part)
        host += 1
    return eval_store.concat_results(parts) if parts else None
