"""Benchmark: where the small DDPM++ train step spends its time, beside torch (not a test).

Two breakdowns of ``bench/train_step.py``'s ``small`` setup (nf 32, ch_mult (1,2,2), 1 res
block, attention at 16, batch 32, VP λ = g² DSM):

1. **The step in stages** (jitted, median of alternated repeats): the loss alone (the
   network forward in train mode, with the loss's noise and weighting), the loss and its
   gradient, and the whole step (gradient, clipping, Adam, EMA, finiteness guard). The
   differences are the backward pass and the optimizer.
2. **The step's layers** at the shapes the network calls them with, recorded by a flax
   method interceptor during an abstract forward: every ``nn.Conv`` (forward, input
   gradient, weight gradient), ``GroupNorm``, ``nn.Dense`` (the NINs and embeddings) and
   the attention core (softmax(q kᵀ/√C) v) of every ``AttnBlock``, each timed alone,
   forward and forward + backward, times the number of calls. The rest of the step
   (elementwise ops, SiLU, residual sums, dropout, the loss, the optimizer) is what the
   stages measure beyond the layers' sum.

With torch importable (``pip install torch``; not a project dependency) each layer is
also timed in torch on the same shapes in the PyTorch port's layout (NCHW; NIN as its
einsum), alternated with the JAX timing in the same run, and the ratio is printed: the
per-layer answer to why the port's whole step is faster on this CPU.

    python bench/train_step_parts.py [--repeats 7] [--batch 32]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.train_step import build  # noqa: E402
from models import (
    layers,  # noqa: E402
    normalization,  # noqa: E402
)

try:  # the optional peer
    import torch
    import torch.nn.functional as F  # noqa: N812 (torch's convention)
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

Call = Tuple[str, Tuple[Any, ...]]  # (kind, key): the layer and what fixes its cost


def record_calls(
    model: nn.Module, variables: Any, x: jax.Array, y: jax.Array
) -> collections.Counter:
    """Counts the network's layer calls by (kind, shape key) during an abstract forward.

    Kinds: 'conv' (key: input shape, features, kernel, strides, dilation), 'groupnorm'
    (input shape, groups), 'dense' (input shape, features), 'attention' (the AttnBlock's
    input shape: its q, k, v have that shape).
    """
    calls: collections.Counter = collections.Counter()

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == '__call__' and args:
            shape = tuple(args[0].shape)
            if isinstance(m, nn.Conv):
                key = (shape, m.features, tuple(m.kernel_size), _pair(m.strides))
                calls[('conv', key + (_pair(m.kernel_dilation),))] += 1
            elif isinstance(m, normalization.GroupNorm):
                calls[('groupnorm', (shape, m.num_groups))] += 1
            elif isinstance(m, nn.Dense):
                calls[('dense', (shape, m.features))] += 1
            elif isinstance(m, layers.AttnBlock):
                calls[('attention', (shape,))] += 1
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v: model.apply(v, x, y, train=False), variables)
    return calls


def _pair(v: Any) -> Tuple[int, int]:
    """A flax Conv stride / dilation (None, an int or a sequence) as a pair."""
    if v is None:
        return (1, 1)
    return (v, v) if isinstance(v, int) else tuple(v)


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` (blocking on its result) after one warm-up call."""
    _block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _block(out: Any) -> None:
    if torch is not None and isinstance(out, torch.Tensor):
        return
    jax.block_until_ready(out)


# --- JAX: each layer alone -------------------------------------------------------------


def jax_layer_fns(kind: str, key: Tuple[Any, ...]) -> Dict[str, Callable[[], Any]]:
    """Jitted callables for one layer: 'fwd', 'fwd+bwd' (value and the vjp to input and
    parameters), and for convolutions 'dx' and 'dw' (each gradient alone)."""
    shape = key[0]
    x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
    if kind == 'attention':
        qkv = (x, x * 0.5, x * 0.25)
        fwd = jax.jit(lambda a, b, c: layers.self_attention_2d(a, b, c))
        out = fwd(*qkv)
        bwd = jax.jit(lambda a, b, c, g: jax.vjp(layers.self_attention_2d, a, b, c)[1](g))
        return {'fwd': lambda: fwd(*qkv), 'fwd+bwd': lambda: bwd(*qkv, out)}
    module = _jax_module(kind, key)
    params = module.init(jax.random.PRNGKey(1), x)
    fwd = jax.jit(module.apply)
    g = fwd(params, x)
    vjp = jax.jit(lambda p, x, g: jax.vjp(module.apply, p, x)[1](g))
    fns = {'fwd': lambda: fwd(params, x), 'fwd+bwd': lambda: vjp(params, x, g)}
    if kind == 'conv':
        dx = jax.jit(lambda p, x, g: jax.vjp(lambda x: module.apply(p, x), x)[1](g))
        dw = jax.jit(lambda p, x, g: jax.vjp(lambda p: module.apply(p, x), p)[1](g))
        fns.update(dx=lambda: dx(params, x, g), dw=lambda: dw(params, x, g))
    return fns


def _jax_module(kind: str, key: Tuple[Any, ...]) -> nn.Module:
    if kind == 'conv':
        _, features, kernel, strides, dilation = key
        return nn.Conv(features, kernel, strides=strides, padding='SAME', kernel_dilation=dilation)
    if kind == 'groupnorm':
        return normalization.GroupNorm(num_groups=key[1])
    return nn.Dense(key[1])


# --- torch: the same layers in the port's layout (NCHW) --------------------------------


def torch_layer_fns(kind: str, key: Tuple[Any, ...]) -> Dict[str, Callable[[], Any]]:
    """The torch counterparts of :func:`jax_layer_fns` (autograd for the backward)."""
    shape = key[0]
    b, h, w, c = shape if len(shape) == 4 else (shape[0], 1, 1, shape[-1])
    x = torch.randn(b, c, h, w) if len(shape) == 4 else torch.randn(b, c)
    if kind == 'attention':
        return _torch_fns(lambda x, *_: _torch_attention(x, x * 0.5, x * 0.25), x, [])
    if kind == 'conv':
        return _torch_conv_fns(x, *key[1:])
    if kind == 'groupnorm':
        gamma, beta = torch.ones(c), torch.zeros(c)
        return _torch_fns(
            lambda x, g, bb: F.group_norm(x, key[1], g, bb, eps=1e-6), x, [gamma, beta]
        )
    wgt = torch.randn(c, key[1]) * 0.05  # NIN: the port's einsum over the channel axis
    bias = torch.zeros(key[1])
    if x.dim() == 4:
        return _torch_fns(
            lambda x, W, bb: torch.einsum('abcd,be->aecd', x, W) + bb[None, :, None, None],
            x,
            [wgt, bias],
        )
    return _torch_fns(lambda x, W, bb: x @ W + bb, x, [wgt, bias])


def _torch_conv_fns(
    x: Any, features: int, kernel, strides, dilation
) -> Dict[str, Callable[[], Any]]:
    """A 'SAME' convolution as the port computes it (stride 2: pad (0, 1), then 'VALID'),
    with each gradient alone through ``aten.convolution_backward``."""
    c = x.shape[1]
    wgt = torch.randn(features, c, *kernel) * 0.05
    bias = torch.zeros(features)
    if strides[0] > 1:
        x, pad = F.pad(x, (0, 1, 0, 1)), [0, 0]
    else:
        pad = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
    conv_args = (list(strides), pad, list(dilation), False, [0, 0], 1)

    def conv(x, wgt, bias):
        return F.conv2d(x, wgt, bias, stride=strides, padding=pad, dilation=dilation)

    fns = _torch_fns(conv, x, [wgt, bias])
    gy = conv(x, wgt, bias)
    backward = torch.ops.aten.convolution_backward
    fns['dx'] = lambda: backward(gy, x, wgt, [features], *conv_args, [True, False, False])
    fns['dw'] = lambda: backward(gy, x, wgt, [features], *conv_args, [False, True, True])
    return fns


def _torch_attention(q: Any, k: Any, v: Any) -> Any:
    """The port's attention core: w = softmax(q kᵀ / √C) over positions, out = w v."""
    b, c, h, w = q.shape
    logits = torch.einsum('bci,bcj->bij', q.reshape(b, c, h * w), k.reshape(b, c, h * w))
    weights = torch.softmax(logits * c**-0.5, dim=-1)
    return torch.einsum('bij,bcj->bci', weights, v.reshape(b, c, h * w)).reshape(b, c, h, w)


def _torch_fns(fn: Callable[..., Any], x: Any, params: List[Any]) -> Dict[str, Callable[[], Any]]:
    def forward():
        with torch.no_grad():
            return fn(x, *params)

    leaves = [x.clone().requires_grad_(True)] + [p.clone().requires_grad_(True) for p in params]

    def forward_backward():
        out = fn(*leaves)
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    return {'fwd': forward, 'fwd+bwd': forward_backward}


# --- the step in stages ----------------------------------------------------------------


class Stages:
    """The small DDPM++ train step and its stages, jitted and compiled."""

    def __init__(self, batch_size: int):
        setup = build('small', batch_size=batch_size)
        self.model, self.variables, self.state = setup.model, setup.variables, setup.state
        self.batch, self.labels = setup.batch, setup.labels
        args = (jax.random.PRNGKey(3), self.state.params, self.batch)
        loss = jax.jit(setup.loss_fn).lower(*args).compile()
        grad = jax.jit(jax.value_and_grad(setup.loss_fn, argnums=1)).lower(*args).compile()
        self.step = jax.jit(setup.step_fn).lower(self.state, self.batch).compile()
        self.fns = {
            'loss (forward)': lambda: loss(*args),
            'loss + gradient': lambda: grad(*args),
            'whole step': self.run_step,
        }

    def run_step(self) -> Any:
        return self.step(self.state, self.batch)

    def times(self, repeats: int) -> Dict[str, float]:
        """Median seconds of each stage (alternated), and 'dispatch': the median time for
        a whole-step call to return before its result is ready (host overhead per call)."""
        times: Dict[str, List[float]] = {name: [] for name in self.fns}
        times['dispatch'] = []
        for fn in self.fns.values():
            _block(fn())
        for _ in range(repeats):
            for name, fn in self.fns.items():
                start = time.perf_counter()
                _block(fn())
                times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            out = self.run_step()
            times['dispatch'].append(time.perf_counter() - start)
            _block(out)
        return {k: statistics.median(v) for k, v in times.items()}


def layer_rows(calls: collections.Counter, repeats: int) -> List[Dict[str, Any]]:
    """One row per distinct layer call: JAX (and torch) seconds per part × count."""
    rows = []
    for (kind, key), count in sorted(calls.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        jfns = jax_layer_fns(kind, key)
        tfns = torch_layer_fns(kind, key) if torch is not None else {}
        row = {'kind': kind, 'key': key, 'count': count}
        for part in jfns:
            row[f'jax {part}'] = median_seconds(jfns[part], repeats)
            if part in tfns:
                row[f'torch {part}'] = median_seconds(tfns[part], repeats)
        rows.append(row)
    return rows


def summarize(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Per kind: total seconds per step (count × time) of each part on each side."""
    total: Dict[str, Dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float)
    )
    for row in rows:
        for k, v in row.items():
            if k.startswith(('jax ', 'torch ')):
                total[row['kind']][k] += row['count'] * v
    return total


# --- XLA's profiler: the compiled step's thunks by kind -------------------------------

_CONV = re.compile(r'f32\[\d+,(\d+),\d+,\d+\].* convolution\(.*window=\{size=(\d+)x')


_NAME = re.compile(r'(?:ROOT )?%([\w.\-]+) =')


_OPCODE = re.compile(r'= \S+ ([a-z][\w-]*)\(')


def hlo_instructions(hlo_text: str) -> Dict[str, List[str]]:
    """``{computation name: [instruction lines]}`` of an HLO module's text."""
    comps: Dict[str, List[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        head = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
        if head:
            current = comps.setdefault(head.group(1), [])
        elif current is not None and line.strip().startswith(('%', 'ROOT')):
            current.append(line.strip())
    return comps


def classify(name: str, comps: Dict[str, List[str]], entry: Dict[str, str]) -> str:
    """The kind of one executed thunk (an entry instruction): a convolution as 'conv
    forward', 'conv input grad' (in the transposed jvp) or 'conv weight grad' (its output
    is kernel-shaped, :func:`_conv_kind`); 'matmul';
    'reduction' (a fusion with a reduce: normalisation statistics, sums); 'layout copy'
    (transposes and copies only); 'elementwise' (other fusions); else the opcode."""
    line = entry.get(name, '')
    called = re.search(r'calls=%([\w.\-]+)', line)
    body = comps.get(called.group(1), []) if called else []
    lines = [line] + body
    conv = next((x for x in lines if ' convolution(' in x), None)
    if conv is not None:
        return _conv_kind(conv)
    if any(' dot(' in x for x in lines):
        return 'matmul'
    if any(' reduce(' in x or ' reduce-window(' in x for x in lines):
        return 'reduction'
    opcode = _OPCODE.search(line)
    opcode = opcode.group(1) if opcode else 'other'
    if opcode in ('copy', 'transpose'):
        return 'layout copy'
    if opcode != 'fusion':
        return opcode
    ops = {m.group(1) for x in body for m in [_OPCODE.search(x)] if m}
    if ops <= {'transpose', 'copy', 'parameter', 'bitcast', 'reverse', 'slice', 'pad'}:
        return 'layout copy'
    return 'elementwise'


def _conv_kind(line: str) -> str:
    """A convolution's role in the step. XLA computes the weight gradient of a 'SAME'
    convolution as a convolution whose window spans the activation (e.g. 16×16) and whose
    output is kernel-sized, so a window wider than the output marks it; the input
    gradient comes from the transposed jvp (its op_name metadata)."""
    m = _CONV.search(line)
    if m and int(m.group(2)) > int(m.group(1)):
        return 'conv weight grad'
    return 'conv input grad' if 'transpose(jvp' in line else 'conv forward'


def source(line: str) -> str:
    """Where an instruction comes from, by its op_name metadata: the innermost flax
    module type (``GroupNorm``, ``Dropout``, ``AttnBlock``, …; else the network itself or
    the step around it: loss, gradient clipping, Adam, EMA, finiteness guard) and the
    pass (fwd: the network's forward, bwd: its transpose)."""
    name = re.search(r'op_name="([^"]+)"', line)
    if not name:
        return 'unattributed'
    path = name.group(1)
    modules = re.findall(r'/([A-Z][A-Za-z]+)_\d+', path)
    where = modules[-1] if modules else ('NCSNpp' if 'NCSNpp' in path else 'loss / update')
    if 'transpose(jvp' in path:
        return f'{where} bwd'
    return f'{where} fwd' if 'jvp(' in path else where


def profile_step(
    compiled: Any, run: Callable[[], Any], repeats: int
) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Seconds per step by thunk kind (:func:`classify`; key 'wall': the traced wall time
    per step) and, for the thunks that are not convolutions or matmuls, by
    :func:`source`, from a ``jax.profiler`` trace of ``repeats`` calls of ``run`` (which
    executes ``compiled``). Thunks overlap on the CPU's threads, so kinds can sum to more
    than the wall time."""
    comps = hlo_instructions(compiled.as_text())
    entry_name = next(k for k in comps if k.startswith('main'))
    entry = {m.group(1): x for x in comps[entry_name] for m in [_NAME.match(x)] if m}
    with tempfile.TemporaryDirectory() as folder:
        _block(run())
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(repeats):
                _block(run())
            wall = (time.perf_counter() - start) / repeats
        events = _trace_events(folder)
    kinds: Dict[str, float] = collections.defaultdict(float)
    sources: Dict[str, float] = collections.defaultdict(float)
    for event in events:
        name = event.get('name')
        if event.get('ph') != 'X' or name not in entry:
            continue
        seconds = event.get('dur', 0) * 1e-6 / repeats
        kind = classify(name, comps, entry)
        kinds[kind] += seconds
        if not kind.startswith(('conv', 'matmul')):
            sources[source(entry[name])] += seconds
    kinds['wall'] = wall
    return dict(kinds), dict(sources)


def _trace_events(folder: str) -> List[Dict[str, Any]]:
    path = next(iter(glob.glob(os.path.join(folder, '**', '*.json.gz'), recursive=True)))
    with gzip.open(path) as f:
        trace = json.load(f)
    return trace['traceEvents'] if isinstance(trace, dict) else trace


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--no-layers', dest='layers', action='store_false', help='stages only')
    args = parser.parse_args(argv)
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
    print(
        f'device: {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; torch: '
        f'{torch.__version__ if torch is not None else "not installed (pip install torch)"}'
    )
    setup = Stages(args.batch)
    stages = setup.times(args.repeats)
    for name, sec in stages.items():
        print(f'  {name:16s} {sec * 1e3:8.1f} ms')
    backward = stages['loss + gradient'] - stages['loss (forward)']
    optimizer = stages['whole step'] - stages['loss + gradient']
    print(f'  → backward {backward * 1e3:.1f} ms, optimizer + EMA + guard {optimizer * 1e3:.1f} ms')

    kinds, sources = profile_step(setup.step, setup.run_step, args.repeats)
    print('\nXLA profile of the whole step (thunk time per step by kind, ms):')
    for kind, sec in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f'  {kind:18s} {sec * 1e3:8.1f}  ({sec / kinds["wall"]:.0%} of the wall time)')
    print('  the other thunks by source (the largest 12, ms):')
    for where, sec in sorted(sources.items(), key=lambda kv: -kv[1])[:12]:
        print(f'    {where:24s} {sec * 1e3:8.1f}')

    if not args.layers:
        return
    calls = record_calls(setup.model, setup.variables, setup.batch, setup.labels)
    rows = layer_rows(calls, args.repeats)
    for row in rows:
        parts = ', '.join(
            f'{k} {v * 1e3:.2f}' for k, v in row.items() if k.startswith(('jax', 'torch'))
        )
        print(f'  {row["kind"]:9s} ×{row["count"]:2d} {row["key"]}: {parts} ms')
    print_summary(summarize(rows), stages)


def print_summary(total: Dict[str, Dict[str, float]], stages: Dict[str, float]) -> None:
    """The per-kind table in ms per step and the rest of the step beyond the layers."""
    print('\nper step (count × time), ms:  JAX fwd / fwd+bwd   torch fwd / fwd+bwd', end='')
    print('   JAX/torch fwd+bwd')
    layer_sum = {'fwd': 0.0, 'fwd+bwd': 0.0}
    for kind, t in sorted(total.items()):
        layer_sum['fwd'] += t['jax fwd']
        layer_sum['fwd+bwd'] += t['jax fwd+bwd']
        peer = (
            f'{t["torch fwd"] * 1e3:8.1f} / {t["torch fwd+bwd"] * 1e3:8.1f}   '
            f'{t["jax fwd+bwd"] / t["torch fwd+bwd"]:.2f}x'
            if 'torch fwd' in t
            else 'n/a'
        )
        extra = ''
        if kind == 'conv':
            extra = f'  (JAX dx {t["jax dx"] * 1e3:.1f}, dw {t["jax dw"] * 1e3:.1f}'
            if 'torch dx' in t:
                extra += f'; torch dx {t["torch dx"] * 1e3:.1f}, dw {t["torch dw"] * 1e3:.1f}'
            extra += ')'
        ours = f'{t["jax fwd"] * 1e3:8.1f} / {t["jax fwd+bwd"] * 1e3:8.1f}'
        print(f'  {kind:10s} {ours}   {peer}{extra}')
    rest_f = stages['loss (forward)'] - layer_sum['fwd']
    rest_fb = stages['whole step'] - layer_sum['fwd+bwd']
    print(
        f'  layers sum {layer_sum["fwd"] * 1e3:8.1f} / {layer_sum["fwd+bwd"] * 1e3:8.1f}; '
        f'rest of the loss forward {rest_f * 1e3:.1f} ms, '
        f'rest of the whole step {rest_fb * 1e3:.1f} ms'
    )


if __name__ == '__main__':
    main()
