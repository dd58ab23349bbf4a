"""Shared pytest setup.

JAX runs on the CPU unless ``JAX_PLATFORMS`` is already set (tests are small and the
machine's accelerator, if any, is for benchmarks), in float32 (JAX's default; tests that
need float64 references use NumPy).  Add shared fixtures here.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the platform choice)
import pytest  # noqa: E402
from absl import logging as absl_logging  # noqa: E402


@pytest.fixture
def key() -> jax.Array:
    """A fixed PRNG key, so every test is deterministic."""
    return jax.random.PRNGKey(0)


@pytest.fixture(autouse=True)
def _keep_the_absl_log_level():
    """Parsing ``main.FLAGS`` in a test applies absl's ``--verbosity`` (WARNING by default)
    to the absl logger; later tests of the same worker would lose their INFO lines
    (``caplog``). Each test leaves the logger's level as it found it."""
    logger = absl_logging.get_absl_logger()
    level = logger.level
    yield
    logger.setLevel(level)
