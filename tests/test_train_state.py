"""train_state: the optimizer and EMA against NumPy references of the original code's
``optimization_manager`` + ``flax.optim.Adam`` and TensorFlow's EMA with num_updates."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import train_state
from errors import UserError


# --- optimizer and EMA -----------------------------------------------------------
def optim_config(**overrides):
    optim = dict(
        optimizer='Adam',
        lr=0.1,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        warmup=0,
        grad_clip=-1.0,
    )
    optim.update(overrides)
    return ml_collections.ConfigDict({'optim': optim})


def numpy_reference(params, grads_seq, lr, warmup, clip, wd, b1=0.9, b2=0.999, eps=1e-8):
    """The original optimization_manager + flax.optim.Adam, step by step, in float64."""
    p = np.array(params, np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out, lrs = [], []
    for n, g in enumerate(grads_seq):
        g = np.array(g, np.float64)
        lr_n = lr * min(n / warmup, 1.0) if warmup > 0 else lr
        if clip >= 0:
            g = g * clip / max(np.linalg.norm(g), clip)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        update = (m / (1 - b1 ** (n + 1))) / (np.sqrt(v / (1 - b2 ** (n + 1))) + eps)
        p = p - lr_n * update - lr_n * wd * p
        out.append(p.copy())
        lrs.append(lr_n)
    return out, lrs


@pytest.mark.parametrize(
    'warmup,clip,wd,name', [(3, 1.0, 0.01, 'Adam'), (0, -1.0, 0.0, 'Adam'), (2, 0.5, 0.1, 'AdamW')]
)
def test_optimizer_matches_original_semantics(warmup, clip, wd, name):
    rs = np.random.RandomState(0)
    grads_seq = [rs.randn(5) * s for s in (5.0, 0.1, 2.0, 0.3, 4.0, 1.0)]
    params0 = rs.randn(5)
    tx = train_state.get_optimizer(
        optim_config(optimizer=name, warmup=warmup, grad_clip=clip, weight_decay=wd)
    )
    params = {'w': jnp.asarray(params0[:3], jnp.float32), 'b': jnp.asarray(params0[3:])}
    state = tx.init(params)
    ref, ref_lrs = numpy_reference(params0, grads_seq, 0.1, warmup, clip, wd)
    for g, want, want_lr in zip(grads_seq, ref, ref_lrs):
        grads = {'w': jnp.asarray(g[:3], jnp.float32), 'b': jnp.asarray(g[3:], jnp.float32)}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        got = np.concatenate([params['w'], params['b']])
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(train_state.current_learning_rate(state), want_lr, rtol=1e-6)


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match='config.optim.optimizer'):
        train_state.get_optimizer(optim_config(optimizer='SGD'))
    assert np.isnan(train_state.current_learning_rate(optax.sgd(0.1).init({'a': jnp.ones(1)})))


def test_ema_warm_up():
    ema, new = {'a': jnp.asarray([1.0])}, {'a': jnp.asarray([0.0])}
    for step, decay in ((0, 0.1), (5, 6 / 15), (1000, 1001 / 1010), (10**6, 0.999)):
        got = train_state.ema_update(ema, new, jnp.asarray(step), 0.999)['a']
        np.testing.assert_allclose(got, [decay], rtol=1e-6)


def test_ema_without_warm_up_is_the_originals_constant_rate(tmp_path):
    """d = rate at every step (the originals' EMA) where an imported state is continued."""
    ema, new = {'a': jnp.asarray([1.0])}, {'a': jnp.asarray([0.0])}
    got = train_state.ema_update(ema, new, jnp.asarray(5), 0.999, warmup=False)['a']
    np.testing.assert_allclose(got, [0.999], rtol=1e-7)
    warm = train_state.ema_update(ema, new, jnp.asarray(5), 0.999)['a']
    np.testing.assert_allclose(warm, [6.0 / 15.0], rtol=1e-6)
    assert train_state.ema_warmup_in(str(tmp_path))
    (tmp_path / train_state.IMPORTED_FILE).write_text('{}')
    assert not train_state.ema_warmup_in(str(tmp_path))
