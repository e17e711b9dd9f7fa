#!/bin/bash
# Real-scale check of worldsim eval: tokenize a real Crafter store with the default VQ tokenizer,
# train a crafter-preset block-diffusion model for a few minutes, train an IDM, evaluate on a
# disjoint store (used whole), and cross-check SSIM against scikit-image.
cd "$(dirname "$0")/.."
# The package maps tokenizers/, inference/ and client/ under worldsim (pyproject package-dir).
P=/tmp/h2pkg; rm -rf $P; mkdir -p $P; cp -r worldsim $P/; cp -r tokenizers inference client $P/worldsim/
export PYTHONPATH=$P PYTHONUNBUFFERED=1
DEV=${DEV:-cuda}; MIN=${MIN:-2.5}; IDMSTEPS=${IDMSTEPS:-1500}; EP=${EP:-16}; OUTD=${OUT:-/tmp/h2out}
W="python3 -P -m worldsim"
T=/tmp/h2work; rm -rf $T; mkdir -p $T $OUTD
set -x
$W tokenize --data .h2gpu/train --tokenizer assets/tokenizers/crafter --out $T/shards --device $DEV --no-progress || exit 1
$W train --shards $T/shards --tokenizer assets/tokenizers/crafter --out $T/wm --objective block_diffusion \
   --preset crafter --steps 100000 --max-minutes $MIN --batch 32 --device $DEV --no-progress || exit 1
$W train-idm --data .h2gpu/train --out $T/idm --steps $IDMSTEPS --device $DEV --no-progress || exit 1
$W eval --bundle $T/wm --data .h2gpu/test --idm $T/idm --out $OUTD/eval --episodes $EP --videos 1 \
   --decoder block_diffusion:4 --decoder block_diffusion:8 --device $DEV --no-progress || exit 1
$W eval --bundle $T/wm --data .h2gpu/train --out $T/eval-val --episodes $EP --videos 0 --no-teacher-forced \
   --device $DEV --no-progress
python3 -P .h2gpu/ssim_check.py
cp $T/wm/config.json $OUTD/bundle_config.json
