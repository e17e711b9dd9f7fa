#!/usr/bin/env bash
# The GPU checks and benchmarks, in one call on a CUDA machine that has PyTorch already
# (nothing is downloaded: worldsim installs without its dependencies).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/worldsim-gpu}
mkdir -p "$OUT"
pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
if ! python -c "import worldsim.inference.engine" 2>/dev/null; then
    # No installable build backend there: map the package folders by hand in this copy.
    for d in tokenizers inference client; do ln -sfn "../$d" "worldsim/$d"; done
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -m worldsim info | grep -E "torch|cuda"
# `bash benchmarks/gpu.sh quick` runs only the graph-replay check and the headline rows
# (mineworld-300m and the crafter preset, block diffusion K=4, full window, with and without
# --graphs): about three minutes, for a session's short lease.
QUICK=${1:-}
if [ "$QUICK" = quick ]; then
    timeout 100 python benchmarks/cuda_check.py 2>&1 | tee "$OUT/cuda_check.txt"
    for g in graphs no-graphs; do  # graph replay is the default on CUDA; --no-graphs: eager
        x=${g/no-graphs/}; x=${x:+_graphs}
        timeout 100 python -m worldsim bench --preset mineworld-300m --device cuda --dtype bf16 --decoders block_diffusion \
            --context 16 --frames 16 --sessions 1,4,16 --session-frames 4 --$g \
            --json "$OUT/bench_mineworld_full_window$x.json" 2>&1 | tee "$OUT/bench_mineworld_full_window$x.txt"
        timeout 60 python -m worldsim bench --preset crafter --device cuda --dtype bf16 --decoders block_diffusion \
            --context 8 --frames 32 --sessions 1,4,16 --$g \
            --json "$OUT/bench_crafter_full_window$x.json" 2>&1 | tee "$OUT/bench_crafter_full_window$x.txt"
    done
    exit 0
fi
# The headline first: mineworld-300m block diffusion K=4 with a full window of context (16
# frames: the state of any session past its first 15 frames), graph-replayed, then eager.
for g in graphs no-graphs; do
    x=${g/no-graphs/}; x=${x:+_graphs}
    python -m worldsim bench --preset mineworld-300m --device cuda --dtype bf16 --decoders block_diffusion \
        --context 16 --frames 32 --sessions 1,4,16 --session-frames 4 --$g \
        --json "$OUT/bench_mineworld_full_window$x.json" 2>&1 | tee "$OUT/bench_mineworld_full_window$x.txt"
done
python benchmarks/cuda_check.py 2>&1 | tee "$OUT/cuda_check.txt"
python -m worldsim bench --preset mineworld-300m --device cuda --dtype bf16 --frames 32 --ar-frames 3 \
    --sessions 1,4,16 --ar-sessions 1 --session-frames 4 --json "$OUT/bench_mineworld.json" 2>&1 | tee "$OUT/bench_mineworld.txt"
python -m worldsim bench --preset crafter --device cuda --dtype bf16 --frames 64 --ar-frames 16 \
    --sessions 1,4,16 --ar-sessions 1,4 --json "$OUT/bench_crafter.json" 2>&1 | tee "$OUT/bench_crafter.txt"
python -m worldsim bench --preset crafter --device cuda --dtype bf16 --decoders block_diffusion --frames 64 \
    --sessions 1,4,16 --graphs --json "$OUT/bench_crafter_graphs.json" 2>&1 | tee "$OUT/bench_crafter_graphs.txt"
python benchmarks/profile_pass.py 2>&1 | tee "$OUT/profile.txt"
python benchmarks/profile_pass.py --graphs 2>&1 | tee "$OUT/profile_graphs.txt"
