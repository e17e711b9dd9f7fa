#!/usr/bin/env bash
# The CPU recipe for the default Crafter model: collect -> fit the tile tokenizer -> tokenize ->
# train (block diffusion) -> choose the temperature it plays at -> train an inverse dynamics model
# -> evaluate, with fixed seeds and sizes. Every step resumes: run it
# again after a kill and it picks up where it stopped. 101 minutes end to end on this project's
# 2-core CPU, on one thread beside other work (see the README's 'Making a model'). Training takes
# `worldsim train`'s default optimizer, Muon for the blocks' matrices (the study's optimizer leg).
#
#   bash scripts/train_default.sh [WORKDIR]        (default: runs/default)
#
# Knobs (environment): EPISODES (1200), STEPS_PER_EPISODE (200), TRAIN_MINUTES (75),
# CONTEXT_NOISE (0.05), TEMPERATURES (0.8,0.9,1.0), IDM_STEPS (1500), EVAL_EPISODES (48), THREADS (2).
set -euo pipefail
W=${1:-runs/default}
EPISODES=${EPISODES:-1200}
STEPS_PER_EPISODE=${STEPS_PER_EPISODE:-200}
TRAIN_MINUTES=${TRAIN_MINUTES:-75}
IDM_STEPS=${IDM_STEPS:-1500}
EVAL_EPISODES=${EVAL_EPISODES:-48}
CONTEXT_NOISE=${CONTEXT_NOISE:-0.05}
TEMPERATURES=${TEMPERATURES:-0.8,0.9,1.0}
HERE=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=${THREADS:-2}
mkdir -p "$W"
phase() { echo "== $1   [$(date +%H:%M:%S), $((SECONDS / 60)) min in]"; }
phase "1/6 collect $EPISODES Crafter episodes of up to $STEPS_PER_EPISODE steps (seed 0)"
worldsim collect --env crafter --episodes "$EPISODES" --steps "$STEPS_PER_EPISODE" --seed 0 --workers 2 --out "$W/data"
phase "2/6 fit the tile tokenizer"
if [ ! -f "$W/tok/image_tokenizer.safetensors" ]; then
    worldsim train-tokenizer --kind tile --data "$W/data" --out "$W/tok" --seed 0
fi
phase "3/6 tokenize"
worldsim tokenize --data "$W/data" --tokenizer "$W/tok" --out "$W/tokens"
phase "4/6 train (block diffusion, crafter preset, $TRAIN_MINUTES minutes)"
worldsim train --shards "$W/tokens" --tokenizer "$W/tok" --out "$W/model" --objective block_diffusion \
    --preset crafter --frames 4 --batch 16 --lr 1.5e-3 --steps 100000 --max-minutes "$TRAIN_MINUTES" \
    --context-noise "$CONTEXT_NOISE" --dtype bf16 --seed 0
phase "5/6 choose the temperature it plays at ($TEMPERATURES) on two draws of held-out windows"
# Recorded in the bundle; where no temperature keeps PSNR above copy-last, none is, and the
# model is judged greedy below and plays at the engine's default.
python "$HERE/pick_temperature.py" "$W/model" --data "$W/data" --temperatures "$TEMPERATURES" \
    --episodes "$EVAL_EPISODES" --seeds 0,1 --out "$W/temperature" --no-progress --write \
    || echo "no temperature chosen"
phase "6/6 evaluate on held-out episodes (an inverse dynamics model first, for action following)"
worldsim train-idm --data "$W/data" --out "$W/idm" --steps "$IDM_STEPS" --seed 0
# What the report judged: the model's weights, the temperature it plays at and the IDM's weights.
TEMPERATURE=$(python -c 'import json, sys; print(json.load(open(sys.argv[1])).get("decoding", {}).get("temperature"))' "$W/model/config.json")
STAMP=$( (cat "$W/model/model.safetensors" "$W/idm/idm.safetensors"; echo "$TEMPERATURE") | sha256sum | cut -c1-64)
if [ -f "$W/model-eval/report.json" ] && [ "$(cat "$W/model-eval/judged.sha256" 2>/dev/null)" = "$STAMP" ]; then
    echo "the report in $W/model-eval is of this model already"
else
    worldsim eval --bundle "$W/model" --data "$W/data" --idm "$W/idm" --out "$W/model-eval" \
        --episodes "$EVAL_EPISODES" --seed 0      # at the temperature the bundle records
    echo "$STAMP" > "$W/model-eval/judged.sha256"
fi
phase "done: the model in $W/model, its report in $W/model-eval/report.md"
