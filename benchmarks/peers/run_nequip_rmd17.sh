#!/usr/bin/env bash
# Train NequIP on rMD17 with the hyperparameters, split (the same 950/50 frames as e3pot's
# split_seed 0) and wall-time budget of configs/rmd17.yaml, then test on the 1000 test frames.
# usage: bash benchmarks/peers/run_nequip_rmd17.sh NEQUIP_VENV RMD17_DIR MOLECULE MINUTES WORKDIR
set -euo pipefail
venv=$1; data=$2; mol=$3; minutes=$4; work=$(mkdir -p "$5" && cd "$5" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
python "$here/rmd17_to_extxyz.py" "$data/rmd17_${mol}_train_01.npz" "$data/rmd17_${mol}_test_01.npz" "$work"
export RMD17_WORK=$work
hms=$(printf "00:%02d:%02d:00" $((minutes / 60)) $((minutes % 60)))
"$venv/bin/nequip-train" -cp "$here" -cn nequip_rmd17 hydra.run.dir="$work/run" max_time="$hms" \
    > "$work/train.log" 2>&1
grep -E "test0_epoch/(total_energy|forces)_mae" "$work/train.log" | tail -4
