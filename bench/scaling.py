"""Benchmark: a data-parallel throughput model of the paper configs (not a test).

The model (``docs/scaling.md``) of one data-parallel training step on n devices with a
global batch B (per-device batch b = B / n) and P parameters:

    t_step = F_img · b / (peak · MFU)                 compute (forward + backward)
           + 40 · P bytes / HBM bandwidth              Adam + EMA update (memory bound)
           + 2 (r − 1) / r · 4 P bytes / link          ring all-reduce of float32 gradients

F_img (train-step FLOPs per image) is the slope of XLA's cost analysis of the project's
jitted train chunk (``trainer.get_train_chunk_fn``, one step) between two batch sizes;
the intercept is the per-step update. r is the number of participants of the slowest
ring (the devices of one host, or the hosts when the link is a network).

Modes:

``--mode cost``: params, F_img, intercept, all-reduce, checkpoint and input bytes of the
configs (``--configs``, names of ``CONFIGS``), one at a time, cached in ``--cache``.
``--mode predict``: img/s and days per published target (``TARGETS``) from the cache.
``--mode hlo``: all-reduce bytes in the compiled HLO of the train chunk of ``--which``
(small or tiny network) on ``--devices`` forced host devices (a child) against 4 × params.
``--mode devices``: the small DDPM++'s real data-parallel step with 1 and 4 forced host
devices (children alternated ``--rounds`` times, same global batch), and in the 4-device
child an all-reduce of a gradient-sized tree, a local pass over it and a large array
copy, alternated with the steps.
``--mode io``: the host input pipeline (``datasets.train_batch``) rate on CIFAR-shaped
data and a preemption checkpoint's save rate and size.

    python bench/scaling.py --mode cost --configs small,ddpm,ddpmpp [--compiled]
    python bench/scaling.py --mode predict [--mfu 0.4]
    python bench/scaling.py --mode hlo --which small
    python bench/scaling.py --mode devices [--rounds 2] [--iters 6] [--batch 32]
    python bench/scaling.py --mode io
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from snapshot import load_config  # noqa: E402  (bench/ is on sys.path)
from train_step import flops, seconds  # noqa: E402

import checkpointing  # noqa: E402
import datasets  # noqa: E402
import losses  # noqa: E402
import sde_lib  # noqa: E402
import train_state  # noqa: E402
import trainer  # noqa: E402
from devices import AXIS, get_mesh, to_global  # noqa: E402
from models import utils as mutils  # noqa: E402

F32 = 4  # bytes
# Bytes the Adam + EMA update moves per parameter: reads of params, grads (twice: the
# global-norm clip, then Adam), mu, nu, EMA and writes of params, mu, nu, EMA, float32.
UPDATE_BYTES_PER_PARAM = 10 * F32
PAPER_STEPS = 1_300_000  # Score SDE / ScoreFlow CIFAR-10 schedule (n_iters 1300001)
DDPM_STEPS_S = 21  # published: Ho et al. 2020, App. B, CIFAR-10 on a TPU v3-8, batch 128

VP_DDPMPP = 'configs/vp/cifar10_ddpmpp_continuous.py'
# name: (config file, network overrides)
CONFIGS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    'tiny': (VP_DDPMPP, dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())),
    'small': (VP_DDPMPP, dict(nf=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,))),
    'ddpm': ('configs/vp/ddpm/cifar10.py', {}),
    'ddpm_ho': ('configs/vp/ddpm/cifar10.py', dict(name='ddpm_ho')),  # Ho et al.'s U-Net
    'ddpmpp': (VP_DDPMPP, {}),
    'ddpmpp_deep': ('configs/vp/cifar10_ddpmpp_deep_continuous.py', {}),
    'ncsnpp': ('configs/ve/cifar10_ncsnpp_continuous.py', {}),
    'ncsnpp_deep': ('configs/ve/cifar10_ncsnpp_deep_continuous.py', {}),
}
PAPER = 'ddpm_ho,ddpmpp,ddpmpp_deep,ncsnpp,ncsnpp_deep'


@dataclasses.dataclass(frozen=True)
class Target:
    """A published accelerator setup (vendor numbers, not measured here).

    ``peak``: dense TFLOP/s per device in the type XLA uses for float32 convolutions by
    default there (TPU: bf16 passes; Ampere / Hopper: TF32). ``hbm``: GB/s per device.
    ``ring``: participants of the slowest all-reduce ring; ``link``: GB/s one way per
    participant on it.
    """

    name: str
    devices: int
    peak: float
    hbm: float
    ring: int
    link: float
    source: str


TARGETS = [
    Target('TPU v3-8 (4 chips)', 4, 123, 900, 4, 340e3 / 1024, 'cloud.google.com/tpu/docs/v3'),
    Target('TPU v4-8 (4 chips)', 4, 275, 1200, 4, 1.1e6 / 4096, 'cloud.google.com/tpu/docs/v4'),
    Target('TPU v4-32 (16 chips)', 16, 275, 1200, 16, 1.1e6 / 4096, 'cloud.google.com/tpu/docs/v4'),
    Target('8x A100 SXM, NVLink', 8, 156, 1555, 8, 300, 'NVIDIA A100 datasheet'),
    Target('8x H100 SXM, NVLink', 8, 494, 3350, 8, 450, 'NVIDIA H100 datasheet'),
    Target('4 nodes x 8 A100, 100 Gb/s', 32, 156, 1555, 4, 12.5, 'A100 + 100 Gb/s NIC'),
    Target('4 nodes x 8 A100, 400 Gb/s', 32, 156, 1555, 4, 50, 'A100 + 400 Gb/s NIC'),
]


# --- configs and the project's train step ----------------------------------------------


def get_config(name: str, batch_size: Optional[int] = None) -> ml_collections.ConfigDict:
    """The prepared config ``name`` of ``CONFIGS``, with ``batch_size`` as the global
    training batch if given."""
    path, network = CONFIGS[name]
    config = load_config(os.path.join(REPO, path))
    config.model.update(network)
    if batch_size is not None:
        config.training.batch_size = batch_size
    return config


def build_step(config: ml_collections.ConfigDict, model: Any, optimizer: Any) -> Callable:
    """The train ``step_fn`` as ``trainer.Trainer`` builds it."""
    options = losses.LossOptions.from_config(config)
    sde = sde_lib.get_sde(config)
    return losses.get_step_fn(sde, model, optimizer, True, options, config.model.ema_rate)


def abstract_chunk(config: ml_collections.ConfigDict, batch: int) -> Tuple[Callable, tuple]:
    """(the scan train chunk over ``get_mesh()``, abstract arguments of one step of a
    global ``batch``): what runs on GPU / TPU, without allocating the state."""
    model, optimizer = mutils.create_model(config), train_state.get_optimizer(config)
    params = mutils.init_shapes(config)['params']
    init = lambda p: train_state.init_train_state(jax.random.PRNGKey(0), p, optimizer)
    state = jax.eval_shape(init, params)
    sums = jax.eval_shape(trainer.new_log_sums)
    x = jax.ShapeDtypeStruct((1, batch) + datasets.data_shape(config), jnp.float32)
    scaler = datasets.get_data_scaler(config)
    chunk = trainer.get_train_chunk_fn(
        build_step(config, model, optimizer), scaler, get_mesh(), use_scan=True
    )
    return chunk, (state, sums, x)


# --- cost mode ---------------------------------------------------------------------------


def step_flops(name: str, batch: int, compiled: bool) -> Tuple[float, float]:
    """(XLA's flops, seconds to get them) of one train step of ``name`` at ``batch`` on
    one device; lowered HLO unless ``compiled``."""
    start = time.perf_counter()
    chunk, args = abstract_chunk(get_config(name, batch), batch)
    lowered = chunk.lower(*args)
    total = flops(lowered.compile() if compiled else lowered)
    return total, time.perf_counter() - start


def tree_bytes(tree: Any) -> int:
    """Bytes of all array leaves of ``tree`` (arrays or ShapeDtypeStructs)."""
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def static_costs(name: str) -> Dict[str, float]:
    """Params, checkpoint (whole train state), all-reduce, update and input bytes, and
    the config's schedule (batch, steps, save frequencies)."""
    config = get_config(name)
    _, (state, _, x) = abstract_chunk(config, 1)
    params = mutils.param_count(state.params)
    return {
        'params': params,
        'checkpoint_bytes': tree_bytes(state),
        'allreduce_bytes': F32 * params,
        'update_bytes': UPDATE_BYTES_PER_PARAM * params,
        'input_bytes_per_img': tree_bytes(x),
        'n_iters': int(config.training.n_iters),
        'batch_size': int(config.training.batch_size),
        'preemption_freq': int(config.training.snapshot_freq_for_preemption),
        'snapshot_freq': int(config.training.snapshot_freq),
    }


def cost_record(name: str, batches: List[int], compiled: bool) -> Dict[str, Any]:
    """``static_costs`` and the flops line F(b) = F_img · b + F_0 through two batches."""
    (b1, b2), kind = batches, 'compiled' if compiled else 'lowered'
    (f1, s1), (f2, s2) = step_flops(name, b1, compiled), step_flops(name, b2, compiled)
    slope = (f2 - f1) / (b2 - b1)
    record = {'name': name, 'kind': kind, 'batches': [b1, b2], 'flops': [f1, f2]}
    record.update(static_costs(name))
    record.update({'gflop_per_img': slope / 1e9, 'gflop_fixed': (f1 - slope * b1) / 1e9})
    record['seconds'] = s1 + s2
    return record


def read_cache(path: str) -> Dict[str, Any]:
    """The cost records of ``path`` ({} if there is none), keyed name/kind/batches."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def run_cost(args: argparse.Namespace) -> None:
    """Prints (and caches) the cost record of each of ``--configs``, one at a time."""
    batches = [int(b) for b in args.batches.split(',')]
    kind = 'compiled' if args.compiled else 'lowered'
    for name in args.configs.split(','):
        cache = read_cache(args.cache)
        key = f'{name}/{kind}/{args.batches}'
        if key not in cache:
            cache[key] = cost_record(name, batches, args.compiled)
            with open(args.cache, 'w') as f:
                json.dump(cache, f, indent=1)
        print_cost(cache[key])


def print_cost(r: Dict[str, Any]) -> None:
    """One line per cost record."""
    print(
        f'{r["name"]} ({r["kind"]}, batches {r["batches"]}): {r["params"]:,} params; '
        f'train step {r["gflop_per_img"]:.2f} GFLOP/img + {r["gflop_fixed"]:.3f} GFLOP/step '
        f'(F(b) = {", ".join(f"{f / 1e9:.2f}" for f in r["flops"])} GFLOP); all-reduce '
        f'{r["allreduce_bytes"] / 1e6:.1f} MB/step; update {r["update_bytes"] / 1e6:.0f} MB; '
        f'checkpoint {r["checkpoint_bytes"] / 1e6:.0f} MB; input '
        f'{r["input_bytes_per_img"]} B/img; {r["seconds"]:.0f} s',
        flush=True,
    )


# --- predict mode ------------------------------------------------------------------------


def predict(r: Dict[str, Any], t: Target, mfu: float) -> Dict[str, float]:
    """Seconds of compute, update and all-reduce per step of the config's global batch
    on ``t``, and what follows from them (images/s, days, input and checkpoint rates).

    t_compute = F_img · (batch / n) / (peak · MFU); t_update = 40 P / HBM;
    t_allreduce = 2 (r − 1) / r · 4 P / link. Checkpoint saves are synchronous: every
    ``snapshot_freq_for_preemption`` and every ``snapshot_freq`` steps the whole state
    (params, EMA, Adam's μ and ν: 16 P bytes) is written; the write rate that keeps them
    under 1 % of the time is 16 P · (1/f_pre + 1/f_snap) / (0.01 · t_step).
    """
    batch = r['batch_size']
    per_device = batch / t.devices
    compute = r['gflop_per_img'] * 1e9 * per_device / (t.peak * 1e12 * mfu)
    update = r['update_bytes'] / (t.hbm * 1e9)
    allreduce = 2 * (t.ring - 1) / t.ring * r['allreduce_bytes'] / (t.link * 1e9)
    serial = compute + update + allreduce
    saves_per_step = 1 / r['preemption_freq'] + 1 / r['snapshot_freq']  # synchronous saves
    return {
        'compute': compute,
        'update': update,
        'allreduce': allreduce,
        'img_s': batch / serial,
        'img_s_overlap': batch / max(compute + update, allreduce),
        'comm_share': allreduce / serial,
        'days': PAPER_STEPS * serial / 86400,
        'days_n_iters': r['n_iters'] * serial / 86400,
        'input_mb_s': r['input_bytes_per_img'] * batch / serial / 1e6,
        'ckpt_mb_s_1pct': r['checkpoint_bytes'] * saves_per_step / (0.01 * serial) / 1e6,
    }


def implied_mfu(r: Dict[str, Any], t: Target, img_s: float) -> float:
    """The MFU at which the model gives ``img_s`` (a published rate) on ``t``
    (bisection: the predicted rate grows with the MFU)."""
    lo, hi = 1e-4, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predict(r, t, mid)['img_s'] < img_s else (lo, mid)
    return (lo + hi) / 2


def run_predict(args: argparse.Namespace) -> None:
    """One line per (config, target) of the cached lowered records: the step's parts,
    img/s (serial and overlapped), days, input and checkpoint rates. The MFU is
    ``--mfu`` or the one that reproduces DDPM's published rate on a TPU v3-8."""
    cache = read_cache(args.cache)
    records = {r['name']: r for r in cache.values() if r['kind'] == 'lowered'}
    mfu = args.mfu
    if 'ddpm_ho' in records:  # Ho et al. 2020, App. B: 21 steps/s at batch 128, TPU v3-8
        anchor = implied_mfu(records['ddpm_ho'], TARGETS[0], DDPM_STEPS_S * 128)
        print(
            f'DDPM on TPU v3-8 (published {DDPM_STEPS_S} steps/s at batch 128): implied MFU '
            f'{anchor:.1%}'
        )
        mfu = mfu or anchor
    mfu = mfu or 0.25
    print(f"MFU {mfu:.1%}, the configs' batch, all-reduce not overlapped")
    for name in args.configs.split(','):
        if name not in records:
            print(f'{name}: not in {args.cache}; run --mode cost first')
            continue
        r = records[name]
        for t in TARGETS:
            p = predict(r, t, mfu)
            print(
                f'{name:12s} {t.name:28s} compute {p["compute"] * 1e3:6.1f} ms  update '
                f'{p["update"] * 1e3:4.1f} ms  all-reduce {p["allreduce"] * 1e3:5.2f} ms '
                f'({p["comm_share"]:.0%})  {p["img_s"]:6.0f} img/s ({p["img_s_overlap"]:.0f} '
                f'overlapped)  {p["days"]:.2f} d / 1.3M steps ({p["days_n_iters"]:.2f} d / '
                f'{r["n_iters"]})  input {p["input_mb_s"]:.0f} MB/s  saves < 1 % of the time '
                f'at > {p["ckpt_mb_s_1pct"]:.0f} MB/s',
                flush=True,
            )


# --- hlo mode ----------------------------------------------------------------------------

_COLLECTIVE = re.compile(
    r'=\s*(.+?)\s+(all-reduce|all-reduce-start|reduce-scatter|all-gather|all-gather-start|'
    r'collective-permute|collective-permute-start|all-to-all)\('
)
_SHAPE = re.compile(r'\b(pred|[suf]\d+|bf16)\[([\d,]*)\]')


def collective_bytes(hlo: str) -> Dict[str, Dict[str, int]]:
    """{op: {'count', 'bytes'}} of the collectives of an HLO module's text: the bytes of
    each op's result (per device; for all-reduce = its operand bytes)."""
    out: Dict[str, Dict[str, int]] = {}
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if not m:
            continue
        op = m.group(2).replace('-start', '')
        size = 0
        for dtype, dims in _SHAPE.findall(m.group(1)):
            bits = 8 if dtype == 'pred' else int(dtype.lstrip('sufb') or 16)
            size += int(np.prod([int(d) for d in dims.split(',') if d])) * bits // 8
        entry = out.setdefault(op, {'count': 0, 'bytes': 0})
        entry['count'] += 1
        entry['bytes'] += size
    return out


def run_hlo(args: argparse.Namespace) -> None:
    """``hlo_child`` on ``--devices`` forced host devices; prints its result and the ratio
    of the all-reduce bytes to 4 × params."""
    argv = ['--mode', 'hlo_child', '--which', args.which, '--batch', str(args.batch)]
    r = child(args.devices, argv)
    print(json.dumps(r))
    reduced = r['collectives'].get('all-reduce', {'count': 0, 'bytes': 0})
    print(
        f'{r["which"]} on {r["devices"]} devices: {reduced["count"]} all-reduce ops, '
        f'{reduced["bytes"]:,} bytes per device = {reduced["bytes"] / r["expected_bytes"]:.4f}'
        f' x 4 x {r["params"]:,} params; other collectives: '
        f'{ {k: v for k, v in r["collectives"].items() if k != "all-reduce"} }',
        flush=True,
    )


def run_hlo_child(args: argparse.Namespace) -> Dict[str, Any]:
    """All-reduce bytes of the compiled train chunk of ``--which`` on this process's
    devices, against 4 × params."""
    n = jax.device_count()
    config = get_config(args.which, args.batch)
    chunk, abstract = abstract_chunk(config, args.batch)
    start = time.perf_counter()
    hlo = chunk.lower(*abstract).compile().as_text()
    result = {
        'which': args.which,
        'devices': n,
        'params': mutils.param_count(abstract[0].params),
        'collectives': collective_bytes(hlo),
        'compile_s': time.perf_counter() - start,
    }
    result['expected_bytes'] = F32 * result['params']
    print(json.dumps(result), flush=True)
    return result


# --- devices mode ------------------------------------------------------------------------


def child(devices: int, argv: List[str]) -> Dict[str, Any]:
    """Runs this script with ``argv`` on ``devices`` forced host devices; its last line."""
    env = dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
    )
    cmd = [sys.executable, os.path.abspath(__file__)] + argv
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def real_step(config: ml_collections.ConfigDict) -> Callable[[], Any]:
    """One timed call of the project's data-parallel step: replicated, donated state,
    a ``[1, B, ...]`` batch sharded ``P(None, 'data')`` (``Trainer``'s set-up)."""
    mesh = get_mesh()
    model, optimizer, state = train_state.create_train_state(config, mesh)
    chunk = trainer.get_train_chunk_fn(
        build_step(config, model, optimizer), datasets.get_data_scaler(config), mesh
    )
    shape = (1, config.training.batch_size) + datasets.data_shape(config)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    batch = to_global(x, mesh, P(None, AXIS))
    new_sums = jax.jit(trainer.new_log_sums, out_shardings=NamedSharding(mesh, P()))
    holder = {'state': state, 'sums': new_sums()}

    def step() -> Any:
        holder['state'], holder['sums'] = chunk(holder['state'], new_sums(), batch)
        return holder['state'].params

    return step


def gradient_tree(config: ml_collections.ConfigDict) -> Any:
    """A float32 tree of the params' shapes with a leading device axis, sharded over it:
    each device holds one gradient-sized copy (4 P bytes)."""
    mesh, n = get_mesh(), jax.device_count()
    params = mutils.init_shapes(config)['params']
    sharding = NamedSharding(mesh, P(AXIS))
    make = lambda: jax.tree.map(lambda a: jnp.ones((n,) + a.shape, jnp.float32), params)
    return jax.jit(make, out_shardings=sharding)()


def flat_eighth(config: ml_collections.ConfigDict) -> jax.Array:
    """A float32 ``[n, P // 8]`` array sharded over the devices: an eighth of the
    gradient bytes per device, for the latency / bandwidth split of the all-reduce."""
    n, params = jax.device_count(), mutils.param_count(mutils.init_shapes(config))
    sharding = NamedSharding(get_mesh(), P(AXIS))
    return jax.jit(lambda: jnp.ones((n, params // 8), jnp.float32), out_shardings=sharding)()


def mesh_map(fn: Callable[[jax.Array], jax.Array]) -> Callable[[Any], Any]:
    """jit(shard_map(tree.map(fn))) over the ``'data'`` axis of ``get_mesh()``."""
    spec = P(AXIS)
    body = lambda tree: jax.tree.map(fn, tree)
    return jax.jit(jax.shard_map(body, mesh=get_mesh(), in_specs=spec, out_specs=spec))


def copy_rate(mb: int = 256) -> Callable[[], float]:
    """Memory bandwidth probe: bytes read + written per second by ``x + 1`` on a float32
    array of ``mb`` MB on one device."""
    x = jnp.ones((mb * 2**20 // F32,), jnp.float32)
    add = jax.jit(lambda x: x + 1.0)
    jax.block_until_ready(add(x))
    return lambda: 2 * x.nbytes / min(seconds(lambda: add(x)) for _ in range(3))


def run_child(args: argparse.Namespace) -> Dict[str, Any]:
    """Step time of the small network's real step on this process's devices; with more
    than one device also the all-reduce of a gradient-sized tree and a local pass over it,
    alternated with the steps, and the copy rate."""
    n = jax.device_count()
    config = get_config('small', args.batch)
    step = real_step(config)
    start = time.perf_counter()
    jax.block_until_ready(step())  # compile + warm-up
    compile_s = time.perf_counter() - start
    probes = {'copy_bytes_s': copy_rate()}
    if n > 1:
        tree, eighth = gradient_tree(config), flat_eighth(config)
        psum, local = mesh_map(lambda x: jax.lax.psum(x, AXIS)), mesh_map(lambda x: x * 2.0)
        jax.block_until_ready((psum(tree), local(tree), psum(eighth)))
        probes['allreduce_s'] = lambda: seconds(lambda: psum(tree))
        probes['local_s'] = lambda: seconds(lambda: local(tree))
        probes['allreduce_eighth_s'] = lambda: seconds(lambda: psum(eighth))
    times: Dict[str, List[float]] = {'step_s': []}
    for _ in range(args.iters):  # alternated
        times['step_s'].append(seconds(step))
        for key, probe in probes.items():
            times.setdefault(key, []).append(probe())
    result = {k: statistics.median(v) for k, v in times.items()}
    result.update({'devices': n, 'compile_s': compile_s, 'batch': args.batch})
    result['params'] = mutils.param_count(mutils.init_shapes(config)['params'])
    if n > 1:
        result['psum_collectives'] = collective_bytes(
            psum.lower(tree).compile().as_text()  # the probe's own all-reduce ops
        )
        result['step_ratios'] = {
            k: statistics.median(a / s for a, s in zip(times[k], times['step_s']))
            for k in ('allreduce_s', 'local_s')
        }
    print(json.dumps(result), flush=True)
    return result


def allreduce_model(params: int, n: int, copy_bytes_s: float) -> Tuple[float, float]:
    """Predicted seconds of the all-reduce and of the local pass on n host devices that
    share one memory: the ring moves 2 (n − 1)/n · 4P bytes per device, each byte read
    and written once (4 (n − 1) · 4P bytes in all); the local pass reads and writes 4P
    per device (2 n · 4P)."""
    grad = F32 * params
    return 4 * (n - 1) * grad / copy_bytes_s, 2 * n * grad / copy_bytes_s


def run_devices(args: argparse.Namespace) -> None:
    """Children on 1 and 4 devices, alternated ``--rounds`` times; one line per round."""
    argv = ['--mode', 'child', '--batch', str(args.batch), '--iters', str(args.iters)]
    runs: Dict[int, List[Dict[str, Any]]] = {1: [], 4: []}
    for _ in range(args.rounds):
        for n in (1, 4):
            runs[n].append(child(n, argv))
            print(f'{n} device(s): {json.dumps(runs[n][-1])}', flush=True)
    for one, four in zip(runs[1], runs[4]):
        report_devices(one, four)


def report_devices(one: Dict[str, Any], four: Dict[str, Any]) -> None:
    """One round's ratios: 4- vs 1-device step, the all-reduce's share of the 4-device
    step, measured against the memory-traffic model, and the cost per byte of an eighth of
    it (4P/8 per device stays in the caches)."""
    ar_pred, local_pred = allreduce_model(four['params'], 4, four['copy_bytes_s'])
    per_byte = (four['allreduce_s'] / four['params']) / (
        four['allreduce_eighth_s'] / (four['params'] // 8)
    )
    ms = lambda t: f'{t * 1e3:.1f} ms'
    print(
        f'global batch {four["batch"]}: step {ms(one["step_s"])} on 1 device, '
        f'{ms(four["step_s"])} on 4 (ratio {four["step_s"] / one["step_s"]:.2f}, '
        f'difference {ms(four["step_s"] - one["step_s"])}); all-reduce of 4P = '
        f'{F32 * four["params"] / 1e6:.1f} MB: {ms(four["allreduce_s"])} '
        f'({four["step_ratios"]["allreduce_s"]:.1%} of the 4-device step), predicted '
        f'{ms(ar_pred)} at the copy rate {four["copy_bytes_s"] / 1e9:.1f} GB/s '
        f'(measured/predicted {four["allreduce_s"] / ar_pred:.2f}); 4P/8: '
        f'{ms(four["allreduce_eighth_s"])} ({per_byte:.1f}x less per byte); '
        f'local pass {ms(four["local_s"])} (predicted {ms(local_pred)})',
        flush=True,
    )


# --- io mode -----------------------------------------------------------------------------


def pipeline_rate(batch: int, steps: int) -> float:
    """Images/s of ``datasets.train_batch`` (the host pipeline after loading) on a
    CIFAR-10-shaped in-memory shard of random levels, flips on."""
    config = get_config('small', batch)
    levels = np.random.default_rng(0).integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
    shard = datasets.Shard(data=levels, num_examples=len(levels), start=0)
    datasets.train_batch(config, shard, 0, batch)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        datasets.train_batch(config, shard, step, batch)
    return batch * steps / (time.perf_counter() - start)


def trained_like(state: Any) -> Any:
    """``state`` with every float leaf replaced by normal noise: a fresh state's zeros
    (Adam's moments, zero-initialised output layers) compress on disk, a trained one's
    values do not."""
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    noise = lambda k, a: (
        jax.random.normal(k, a.shape, a.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    )
    return jax.tree.unflatten(treedef, [noise(k, a) for k, a in zip(keys, leaves)])


def checkpoint_rate(name: str) -> Tuple[int, float]:
    """(bytes on disk, seconds) of one ``checkpointing.save_preemption`` of ``name``'s
    train state (``trained_like``) into a temporary folder."""
    config = get_config(name, 8)
    state = trained_like(train_state.create_train_state(config, get_mesh())[2])
    folder = tempfile.mkdtemp(prefix='scaling_ckpt_')
    try:
        checkpointing.save_preemption(folder, state)  # warm-up (orbax start-up)
        state = state.replace(step=state.step + 1)
        start = time.perf_counter()
        path = checkpointing.save_preemption(folder, state)
        elapsed = time.perf_counter() - start
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        return size, elapsed
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_io(args: argparse.Namespace) -> None:
    """The host pipeline's rate and each of ``--configs``' checkpoint save."""
    rate = pipeline_rate(args.batch, 50)
    print(
        f'host pipeline (datasets.train_batch, CIFAR-10 shape, batch {args.batch}): '
        f'{rate:,.0f} img/s = {rate * 32 * 32 * 3 * F32 / 1e6:.0f} MB/s of float32 input',
        flush=True,
    )
    for name in args.configs.split(','):
        size, elapsed = checkpoint_rate(name)
        print(
            f'{name}: preemption save {size / 1e6:.0f} MB on disk in {elapsed:.2f} s '
            f'({size / elapsed / 1e6:.0f} MB/s)',
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mode', required=True)
    parser.add_argument('--configs', default=PAPER)
    parser.add_argument('--batches', default='1,2')
    parser.add_argument('--compiled', action='store_true')
    parser.add_argument('--cache', default='/tmp/scaling_cost.json')
    parser.add_argument(
        '--mfu', type=float, default=None, help='default: the ddpm_ho anchor (else 0.25)'
    )
    parser.add_argument('--which', default='small')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--iters', type=int, default=6)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--devices', type=int, default=4)
    args = parser.parse_args()
    modes = {
        'cost': run_cost,
        'predict': run_predict,
        'hlo': run_hlo,
        'hlo_child': run_hlo_child,
        'devices': run_devices,
        'child': run_child,
        'io': run_io,
    }
    modes[args.mode](args)


if __name__ == '__main__':
    main()
