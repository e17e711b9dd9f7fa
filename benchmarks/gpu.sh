#!/usr/bin/env bash
# The GPU checks and benchmarks, in one call on a CUDA machine that has PyTorch already
# (nothing is downloaded or installed: the package folders are mapped by links in this copy).
# Everything lands in $OUT in at most 8 files, the device call's limit: the benches' JSON, and
# one log, gpu.log, of everything printed (the cuda_check lines and the bench tables among it).
set -uo pipefail
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}  # the device's python3 holds PyTorch; it may have no `python`
OUT=${OUT:-/tmp/worldsim-gpu-bench}  # not train_gpu.py's work folder, which it would refuse
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
: >"$LOG"
if ! $PY -c "import worldsim.inference.engine" 2>/dev/null; then
    for d in tokenizers inference client; do ln -sfn "../$d" "worldsim/$d"; done
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
# Fail fast, in one line, where there is no GPU to measure: every step below needs one.
if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA device (torch ' + torch.__version__ + '): nothing measured')" 2>&1 | tee -a "$LOG"; then
    exit 2
fi
$PY -m worldsim info 2>&1 | grep -E "torch|cuda" | tee -a "$LOG"
# run SECONDS NAME ARGS...: `python3 ARGS`, stopped after SECONDS, its output appended to gpu.log
FAILED=0
run() {
    local s=$1 name=$2
    shift 2
    echo "== $name" | tee -a "$LOG"
    timeout "$s" $PY "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { echo "== $name: exit $rc" | tee -a "$LOG"; FAILED=$((FAILED + 1)); }
}
# `bash benchmarks/gpu.sh quick` runs only the graph-replay check and the headline rows
# (mineworld-300m and the crafter preset, block diffusion K=4, full window, with and without
# --graphs): about three minutes, for a session's short lease.
QUICK=${1:-}
if [ "$QUICK" = quick ]; then
    run 100 cuda_check benchmarks/cuda_check.py
    for g in graphs no-graphs; do  # graph replay is the default on CUDA; --no-graphs: eager
        x=${g/no-graphs/}; x=${x:+_graphs}
        run 100 "bench_mineworld_full_window$x" -m worldsim bench --preset mineworld-300m --device cuda --dtype bf16 \
            --decoders block_diffusion --context 16 --frames 16 --sessions 1,4,16 --session-frames 4 --$g \
            --json "$OUT/bench_mineworld_full_window$x.json"
        run 60 "bench_crafter_full_window$x" -m worldsim bench --preset crafter --device cuda --dtype bf16 \
            --decoders block_diffusion --context 8 --frames 32 --sessions 1,4,16 --$g \
            --json "$OUT/bench_crafter_full_window$x.json"
    done
    [ "$FAILED" = 0 ] || { echo "gpu.sh: $FAILED step(s) failed (see gpu.log)" | tee -a "$LOG"; exit 1; }
    exit 0
fi
# The headline first: mineworld-300m block diffusion K=4 with a full window of context (16
# frames: the state of any session past its first 15 frames), graph-replayed, then eager.
for g in graphs no-graphs; do
    x=${g/no-graphs/}; x=${x:+_graphs}
    run 200 "bench_mineworld_full_window$x" -m worldsim bench --preset mineworld-300m --device cuda --dtype bf16 \
        --decoders block_diffusion --context 16 --frames 32 --sessions 1,4,16 --session-frames 4 --$g \
        --json "$OUT/bench_mineworld_full_window$x.json"
done
run 100 cuda_check benchmarks/cuda_check.py
run 300 bench_mineworld -m worldsim bench --preset mineworld-300m --device cuda --dtype bf16 --frames 32 --ar-frames 3 \
    --sessions 1,4,16 --ar-sessions 1 --session-frames 4 --json "$OUT/bench_mineworld.json"
run 200 bench_crafter -m worldsim bench --preset crafter --device cuda --dtype bf16 --frames 64 --ar-frames 16 \
    --sessions 1,4,16 --ar-sessions 1,4 --json "$OUT/bench_crafter.json"
run 200 bench_crafter_graphs -m worldsim bench --preset crafter --device cuda --dtype bf16 --decoders block_diffusion \
    --frames 64 --sessions 1,4,16 --graphs --json "$OUT/bench_crafter_graphs.json"
run 200 profile benchmarks/profile_pass.py
run 200 profile_graphs benchmarks/profile_pass.py --graphs
[ "$FAILED" = 0 ] || { echo "gpu.sh: $FAILED step(s) failed (see gpu.log)" | tee -a "$LOG"; exit 1; }
