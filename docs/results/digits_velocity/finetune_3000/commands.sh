#!/usr/bin/env bash
set -u
cd /work/wt-vel
export JAX_PLATFORMS=cpu
s=$1
common="--config configs/vp/digits_vel_is.py --config.seed=$s --config.training.snapshot_freq=500 --config.training.snapshot_sampling=False --config.training.n_iters=3000"
.venv/bin/python main.py $common --workdir /tmp/dv/s$s --mode train > /tmp/dv/s$s.train.log 2>&1
.venv/bin/python main.py $common --workdir /tmp/dv/s$s --mode eval --config.eval.begin_ckpt=6 --config.eval.end_ckpt=6 --config.eval.enable_bpd=True --config.eval.enable_loss=False --config.eval.bound=False > /tmp/dv/s$s.eval.log 2>&1
echo done > /tmp/dv/DONE$s
