#!/usr/bin/env bash
# Per-layer transcoders (ln2.L -> mlp_out.L) for the zoo's text models, for attribution graphs.
# Usage: tests/scripts/train_graph_transcoders.sh OUT_DIR [quick|full]
# Writes OUT_DIR/<model>/L<layer>/transcoder-ln2.<layer>-<d_sae>/ for every layer.
set -euo pipefail
out=${1:?give an output directory}
which=${2:-quick}
if [ "$which" = quick ]; then
  model=zoo:textlm-quick; layers="0 1"; d_sae=512; k=16; tokens=1000000; seq=64
else
  model=zoo:textlm; layers="0 1 2 3"; d_sae=1536; k=24; tokens=1000000; seq=128
fi
for L in $layers; do
  mechscope dict train "$model" --arch transcoder --site "ln2.$L" --site-out "mlp_out.$L" \
    --out "$out/${model#zoo:}/L$L" --corpus textlm --d-sae "$d_sae" -k "$k" --tokens "$tokens" \
    --seq-len "$seq" --batch 1024 --threads 1 --eval-sequences 32 --json
done
