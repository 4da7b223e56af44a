#!/usr/bin/env bash
# One self-contained device call of the resnet18_slim fine-tune (BENCHMARKS.md, sessions 13-14):
# simulate the usual model_a test split (seed 2026, 1,000 per class), fine-tune FROM on fresh
# sim:model_a images for BUDGET minutes, halve the best checkpoint to float16 (the shipped form),
# then score the starting weights and the new ones on the same test split, with and without
# D4 TTA, so the baseline is measured in the same call. Results land in $OUT/ft.tar,
# the float16 weights in $OUT/weights.tar.
#
#   FROM=pretrained:resnet18_slim_model_a SEED=3 BUDGET=6.5 bash benchmarks/finetune_call.sh
#
# Needs: darklens importable (PYTHONPATH), a GPU, $OUT. FROM may be a carried run folder.
# DEVICE, STEPS, BATCH and TEST (images per class) shrink it for a CPU smoke run of the script.
set -euo pipefail
: "${FROM:?FROM=init_from spec}" "${SEED:?SEED=stream seed}" "${BUDGET:?BUDGET=minutes}"
: "${OUT:?OUT=result folder}"
NAME=${NAME:-ft$SEED} DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-500} BATCH=${BATCH:-1024}
TEST=${TEST:-1000}
RES=/tmp/ft_results  # tarred at the end: the device returns a few files only
mkdir -p "$RES"
dl() { python -m darklens "$@"; }

dl simulate /tmp/ma_test --preset model_a --train 100 --val 100 --test "$TEST" --seed 2026 \
    > "$RES/simulate.txt" 2>&1
dl train sim:model_a --model resnet18_slim --out "runs/$NAME" --recipe fast --device "$DEVICE" \
    --epochs 40 --seed "$SEED" --set sim_steps_per_epoch="$STEPS" --set batch_size="$BATCH" \
    --set lr=5e-4 --set sim_mass_boost=1 --set init_from="$FROM" --set budget_min="$BUDGET" \
    2>&1 | tee "$RES/${NAME}_stdout.txt"
python benchmarks/half_checkpoint.py "runs/$NAME" "runs/${NAME}_fp16"
for pair in "start:$FROM" "$NAME:runs/${NAME}_fp16"; do
    label=${pair%%:*} model=${pair#*:}
    dl evaluate "$model" /tmp/ma_test --split test --out "$RES/eval_$label" --device "$DEVICE"
    dl evaluate "$model" /tmp/ma_test --split test --out "$RES/eval_${label}_tta" --tta \
        --device "$DEVICE"
done
for kind in "" _tta; do
    python benchmarks/compare_predictions.py "$RES/eval_start$kind/predictions.csv" \
        "$RES/eval_$NAME$kind/predictions.csv" --json "$RES/compare_start${kind}_$NAME$kind.json"
done
cp "runs/$NAME/metrics.csv" "$RES/${NAME}_metrics.csv"
cp "runs/$NAME/config.yaml" "$RES/${NAME}_config.yaml"
cp "runs/$NAME/best.json" "$RES/${NAME}_best.json"
tar -C "$RES" -cf "$OUT/ft.tar" . && tar -C runs -cf "$OUT/weights.tar" "${NAME}_fp16"
