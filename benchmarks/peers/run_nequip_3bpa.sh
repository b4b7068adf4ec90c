#!/usr/bin/env bash
# Train NequIP on 3BPA train_300K (the split of benchmarks/energy_accuracy.py), with isolated-atom
# E0s, a 1:1 per-atom energy : force loss and a wall-time budget; test on train_mixedT.xyz.
# usage: bash benchmarks/peers/run_nequip_3bpa.sh NEQUIP_VENV DATASETS_DIR MINUTES WORKDIR
set -euo pipefail
venv=$1; data=$2; minutes=$3; work=$(mkdir -p "$4" && cd "$4" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
python "$here/bpa3_to_extxyz.py" "$data/3bpa/train_300K.xyz" "$data/3bpa/train_mixedT.xyz" "$work"
export RMD17_WORK=$work
hms=$(printf "00:%02d:%02d:00" $((minutes / 60)) $((minutes % 60)))
"$venv/bin/nequip-train" -cp "$here" -cn nequip_3bpa hydra.run.dir="$work/run" max_time="$hms" \
    > "$work/train.log" 2>&1
grep -E "test0_epoch/(total_energy|forces)_mae" "$work/train.log" | tail -4
