#!/usr/bin/env bash
# A day with a CUDA GPU, in one command: set up a virtual environment with torch's CUDA build, e3pot[test,cueq]
# and cuEquivariance's CUDA kernels; run the GPU tests; time e3pot with each kernel backend of the edge
# convolution (benchmarks/speed.py --device cuda --kernels torch cueq), profile one call on aspirin and the water box
# (benchmarks/profile_call.py: GPU kernel time against wall time) and, where their scripts can run on a GPU,
# the peers of ../shared/peers; write everything to benchmarks/results/gpu.md (and speed_gpu.json/.md).
#
#   bash benchmarks/gpu.sh
#
# Variables (defaults in brackets): E3POT_GPU_ENV, the virtual environment [build/venv-gpu, made if absent;
# build/ is ignored by git]; E3POT_GPU_PYTHON, an interpreter that already has torch's CUDA build, e3pot's
# dependencies and cuEquivariance (a machine without internet access): used as it is, nothing installed, and
# e3pot imported from this checkout [unset]; DATA_DIR, the folder of aspirin.xyz and water_box.xyz [$PEERS/data];
# PYTHON, the interpreter that makes it [python3]; TORCH_VERSION [2.13.0]; CUEQ_OPS, the package of
# cuEquivariance's CUDA kernels [cuequivariance-ops-torch-cu12 or -cu13, after the CUDA of the torch installed]; PRESETS [matched paper]; DTYPES
# [float32 float64]; PARTS of speed.py [abcd]; REPS [20]; THREADS, CPU threads [4]; PEERS [../shared/peers];
# CPU_TESTS, 0 to leave out the CPU equivalence tests (CI runs them) when GPU time is short [1].
# Exits 2, having run nothing, on a machine without an NVIDIA GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "benchmarks/gpu.sh: $*" >&2; exit 2; }
say() { echo "[gpu] $*" >&2; }

command -v nvidia-smi >/dev/null 2>&1 \
  || fail "nvidia-smi not found: this script needs a machine with an NVIDIA GPU and its driver; nothing was run"
nvidia-smi -L 2>/dev/null | grep -q GPU || fail "nvidia-smi lists no GPU; nothing was run"

ENV_DIR=${E3POT_GPU_ENV:-build/venv-gpu}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PRESETS=${PRESETS:-matched paper}
DTYPES=${DTYPES:-float32 float64}
PARTS=${PARTS:-abcd}
REPS=${REPS:-20}
THREADS=${THREADS:-4}
CPU_TESTS=${CPU_TESTS:-1}
PEERS=${PEERS:-../shared/peers}
DATA_DIR=${DATA_DIR:-$PEERS/data}
RESULTS=benchmarks/results
LOGS=$RESULTS/gpu-logs
mkdir -p "$LOGS"

# -- environment: torch's CUDA build first, then e3pot with its test and cueq extras and the CUDA kernels,
#    with torch held at the version installed; or, with E3POT_GPU_PYTHON, an interpreter as it is
if [ -n "${E3POT_GPU_PYTHON:-}" ]; then
  py=$E3POT_GPU_PYTHON
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  say "using $py as it is (nothing installed; e3pot from $PWD)"
else
  say "setting up $ENV_DIR"
  E3POT_ENV=$ENV_DIR TORCH_BUILD=cuda TORCH_VERSION=$TORCH_VERSION bash scripts/setup_env.sh
  py=$ENV_DIR/bin/python
  hold=$(mktemp)
  trap 'rm -f "$hold"' EXIT
  "$py" -c 'import torch; print(f"torch=={torch.__version__}")' > "$hold"
  cuda_major=$("$py" -c 'import torch; print((torch.version.cuda or "12").split(".")[0])')
  CUEQ_OPS=${CUEQ_OPS:-cuequivariance-ops-torch-cu$cuda_major}
  "$py" -m pip install -q -c "$hold" -e ".[test,cueq]" "$CUEQ_OPS"
fi
"$py" - <<'PY' || fail "torch of $py cannot use the GPU (a CPU build, or a driver too old for its CUDA)"
import torch
assert torch.cuda.is_available(), "no CUDA"
print(f"[gpu] torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}")
PY
"$py" -c 'import cuequivariance_ops_torch' \
  || fail "cuEquivariance's CUDA kernels do not import (see the error above): the cueq rows would not use them"

# -- tests: the CUDA tests, then the CPU equivalence tests once more on this machine
say "tests (log: $LOGS/tests.log)"
set +e
"$py" -m pytest -q -rs tests/test_cueq.py -k cuda > "$LOGS/tests.log" 2>&1
tests_rc=$?
cpu_tests_rc=skipped
if [ "$CPU_TESTS" != 0 ]; then
  "$py" -m pytest -q tests/test_cueq.py tests/test_kernels.py -k "not cuda" >> "$LOGS/tests.log" 2>&1
  cpu_tests_rc=$?
fi
set -e
tests_summary=$(grep -E "passed|failed|error" "$LOGS/tests.log" | tail -n 2 | tr '\n' ';')
say "tests: $tests_summary"

# -- e3pot, each backend
say "speed.py on the GPU (log: $LOGS/speed.log)"
# shellcheck disable=SC2086  # the lists are meant to split into words
"$py" benchmarks/speed.py --device cuda --kernels torch cueq --presets $PRESETS --dtypes $DTYPES --parts "$PARTS" \
  --reps "$REPS" --water-reps "$REPS" --threads "$THREADS" --data-dir "$DATA_DIR" --out "$RESULTS/speed_gpu.json" > "$LOGS/speed.log" 2>&1 \
  || { tail -n 30 "$LOGS/speed.log" >&2; fail "benchmarks/speed.py failed; see $LOGS/speed.log"; }

# -- where the time of one call goes (aspirin, then the water box): wall time against GPU kernel time, launches, host-side operators
say "profile_call.py (log: $LOGS/profile.log)"
for case in aspirin:gpu_profile water:gpu_profile_water; do
  "$py" benchmarks/profile_call.py --structure "${case%%:*}" --data-dir "$DATA_DIR" --out "$RESULTS/${case#*:}.json" \
    >> "$LOGS/profile.log" 2>&1 || say "benchmarks/profile_call.py --structure ${case%%:*} failed; see $LOGS/profile.log"
done

# -- the peers, where their scripts take a device: NequIP (with its cuEquivariance or OpenEquivariance
#    kernels, when the script has an option for them) and MACE (with --enable_cueq when the script has it)
peer_dir=""
peer_note="no $PEERS folder: peers not run"
if [ -d "$PEERS" ]; then
  peer_note=""
  runnable=()
  for pkg in nequip mace; do
    script=$PEERS/bench_$pkg.py
    if [ -f "$script" ] && grep -q -- '"--device"' "$script"; then
      runnable+=("$pkg")
    else
      peer_note="$peer_note bench_$pkg.py takes no --device (it runs on the CPU only): not run."
    fi
  done
  if [ ${#runnable[@]} -gt 0 ]; then
    peer_dir=$(bash "$PEERS/setup.sh" "$PWD/$LOGS/peers")
    for pkg in "${runnable[@]}"; do
      variants=("")
      for flag in --enable_cueq --enable-cueq --cueq --openequivariance --enable_oeq; do
        grep -q -- "\"$flag\"" "$peer_dir/bench_$pkg.py" && variants+=("$flag")
      done
      for dt in $DTYPES; do
        for flag in "${variants[@]}"; do
          tag=${flag#--}
          out=$peer_dir/results/${pkg}_${dt}${tag:+_$tag}_gpu.json
          say "peer $pkg $dt ${flag:-(plain)}"
          # shellcheck disable=SC2086
          "$peer_dir/venv-$pkg/bin/python" "$peer_dir/bench_$pkg.py" --dtype "$dt" --threads "$THREADS" \
            --device cuda $flag > "$out" 2> "${out%.json}.log" || say "peer $pkg $dt $flag failed: ${out%.json}.log"
        done
      done
    done
  fi
fi

# -- the table
"$py" - "$RESULTS" "$tests_rc" "$cpu_tests_rc" "$tests_summary" "$peer_dir" "$peer_note" <<'PY'
import glob, json, os, sys

sys.path.insert(0, "benchmarks")
import results as bench_results  # noqa: E402

folder, tests_rc, cpu_rc, summary, peer_dir, peer_note = sys.argv[1:7]
speed = json.load(open(os.path.join(folder, "speed_gpu.json")))


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def num(x, scale=1.0, spec="{:.1f}"):
    return "—" if x is None else spec.format(x * scale)


def row(name, kernels, r, md_key="d_md"):
    b = r.get("b_water") or r.get("b_water_eager")
    return (f"| {name} | {kernels} | {r['dtype']} | {num(get(r, 'a_B1', 'molecules_per_s'))} | "
            f"{num(get(r, 'a_B32', 'molecules_per_s'))} | {num(get(b, 'step_s', 'median_s'), 1e3)} | "
            f"{num(get(b, 'us_per_atom_step'), 1, '{:.2f}')} | {num(get(b, 'peak_gpu_mb'), 1 / 1024, '{:.2f}')} | "
            f"{num(get(r, 'c_train_B5', 'step_s', 'median_s'), 1e3)} | {num(get(r, md_key, 's_per_step'), 1e3)} |")


lines = [bench_results.header(bench_results.provenance("bash benchmarks/gpu.sh")).rstrip(), "",
         f"Tests: CUDA tests {'passed' if tests_rc == '0' else 'FAILED'} (`pytest tests/test_cueq.py -k cuda`), "
         f"CPU equivalence tests {dict(skipped='not run').get(cpu_rc, 'passed' if cpu_rc == '0' else 'FAILED')}; "
         f"{summary.strip(';')}", "",
         "| model | kernels | dtype | (a) B=1 mol/s | (a) B=32 mol/s | (b) water ms/step | (b) µs/atom | "
         "(b) peak GPU GiB | (c) train ms/step | (d) MD ms/step |", "|---" * 10 + "|"]
for r in speed["e3pot"]:
    lines.append(row(f"e3pot {r['preset']}", r.get("kernels", "torch"), r))
for path in sorted(glob.glob(os.path.join(peer_dir, "results", "*_gpu.json"))) if peer_dir else []:
    found = [ln for ln in open(path) if ln.strip().startswith("{")]
    if found:
        r = json.loads(found[-1])
        tag = os.path.basename(path)[:-len("_gpu.json")].split("_", 2)[2:]
        lines.append(row(f"{r['package']} {r['version']}", tag[0] if tag else "its own", r,
                         "d_md_eager" if r["package"] == "nequip" else "d_md"))
if peer_note.strip():
    lines += ["", f"Peers: {peer_note.strip()}"]
lines += ["", "Parts as in benchmarks/speed.py: (a) energy+forces of aspirin, batch 1 and 32; (b) the 768-atom water box; "
          "(c) one training step on 5 aspirins; (d) one ASE MD step. Medians; CUDA synchronised after each call. "
          "Full e3pot table: speed_gpu.md; where the time of one call goes: gpu_profile.md (aspirin), gpu_profile_water.md; logs: gpu-logs/."]
with open(os.path.join(folder, "gpu.md"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
say "wrote $RESULTS/gpu.md"
