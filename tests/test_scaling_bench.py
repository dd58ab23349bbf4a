"""``bench/scaling.py``: the numbers its throughput model rests on.

- The gradient all-reduce of the project's data-parallel train chunk, compiled for 4
  host devices (a subprocess: the device count is fixed before JAX starts), moves
  4 × params bytes per device (plus the loss scalar) and no other collective.
- The HLO collective parser counts tuple results and every element type.
- The model's terms: F_img · b / (peak · MFU), update bytes / HBM, 2 (r − 1)/r · 4P / link.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench')
sys.path.insert(0, BENCH)

import scaling  # noqa: E402  (bench/ is on sys.path now)


@pytest.mark.timeout(300)  # a compile in a subprocess: ≈ 20 s alone, minutes on busy cores
def test_compiled_all_reduce_moves_the_float32_gradients_once():
    cmd = [sys.executable, os.path.join(BENCH, 'scaling.py'), '--mode', 'hlo']
    cmd += ['--which', 'tiny', '--batch', '8', '--devices', '4']
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=280, check=True)
    result = json.loads(out.stdout.splitlines()[0])
    assert result['devices'] == 4
    collectives = result['collectives']
    assert set(collectives) == {'all-reduce'}, collectives
    reduced = collectives['all-reduce']['bytes']
    # the gradients (4 bytes per parameter) and a few float32 scalars (the loss)
    assert 4 * result['params'] <= reduced <= 4 * result['params'] + 64


def test_collective_parser_counts_tuples_and_types():
    hlo = '\n'.join(
        [
            '  %a = f32[3,4]{1,0} all-reduce(f32[3,4]{1,0} %x), replica_groups={}',
            '  %b = (f32[2]{0}, bf16[8]{0}, s32[]) all-reduce(%y, %z, %w), to_apply=%add',
            '  %c = f32[16]{0} all-gather(f32[4]{0} %v), dimensions={0}',
            '  %d = f32[16]{0} add(f32[16]{0} %c, f32[16]{0} %c)',
        ]
    )
    counts = scaling.collective_bytes(hlo)
    assert counts['all-reduce'] == {'count': 2, 'bytes': 48 + 8 + 16 + 4}
    assert counts['all-gather'] == {'count': 1, 'bytes': 64}
    assert len(counts) == 2


def test_ring_all_reduce_term():
    record = {
        'gflop_per_img': 1.0,
        'batch_size': 128,
        'update_bytes': 1e9,
        'allreduce_bytes': 4e9,
        'input_bytes_per_img': 0,
        'checkpoint_bytes': 0,
        'preemption_freq': 1,
        'snapshot_freq': 1,
        'n_iters': 1,
    }
    target = scaling.Target('two devices', 2, 1.0, 1.0, ring=2, link=1.0, source='')
    p = scaling.predict(record, target, mfu=0.5)
    assert p['compute'] == pytest.approx(1e9 * 64 / 0.5e12)  # 64 images per device
    assert p['update'] == pytest.approx(1.0)  # 1 GB at 1 GB/s
    assert p['allreduce'] == pytest.approx(4.0)  # 2 (2 − 1)/2 · 4 GB at 1 GB/s
    assert p['img_s'] == pytest.approx(128 / (p['compute'] + 1.0 + 4.0))
    assert p['img_s_overlap'] == pytest.approx(128 / 4.0)  # hidden behind the all-reduce
    target4 = scaling.Target('four devices', 4, 1.0, 1.0, ring=4, link=2.0, source='')
    assert scaling.predict(record, target4, mfu=1.0)['allreduce'] == pytest.approx(3.0)
