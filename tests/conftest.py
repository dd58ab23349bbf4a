"""Shared pytest setup.

JAX runs on the CPU unless ``JAX_PLATFORMS`` is already set (tests are small and the
machine's accelerator, if any, is for benchmarks), in float32 (JAX's default; tests that
need float64 references use NumPy).  Add shared fixtures here.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the platform choice)
import pytest  # noqa: E402


@pytest.fixture
def key() -> jax.Array:
    """A fixed PRNG key, so every test is deterministic."""
    return jax.random.PRNGKey(0)
