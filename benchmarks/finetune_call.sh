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
# LR sets the peak learning rate (default 5e-4). REF names a second baseline (e.g. the shipped
# model when FROM is an earlier piece), scored and compared in the same call too.
# Needs: darklens importable (PYTHONPATH), a GPU, $OUT. FROM may be a carried run folder.
# DEVICE, STEPS, BATCH and TEST (images per class) shrink it for a CPU smoke run of the script.
set -euo pipefail
: "${FROM:?FROM=init_from spec}" "${SEED:?SEED=stream seed}" "${BUDGET:?BUDGET=minutes}"
: "${OUT:?OUT=result folder}"
NAME=${NAME:-ft$SEED} DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-500} BATCH=${BATCH:-1024}
TEST=${TEST:-1000} LR=${LR:-5e-4} REF=${REF:-}
RES=/tmp/ft_results  # tarred at the end: the device returns a few files only
rm -rf "$RES" "runs/$NAME" "runs/${NAME}_fp16" && mkdir -p "$RES"  # a warm machine keeps them
dl() { python -m darklens "$@"; }

dl simulate /tmp/ma_test --preset model_a --train 100 --val 100 --test "$TEST" --seed 2026 \
    > "$RES/simulate.txt" 2>&1
dl train sim:model_a --model resnet18_slim --out "runs/$NAME" --recipe fast --device "$DEVICE" \
    --epochs 40 --seed "$SEED" --set sim_steps_per_epoch="$STEPS" --set batch_size="$BATCH" \
    --set lr="$LR" --set sim_mass_boost=1 --set init_from="$FROM" --set budget_min="$BUDGET" \
    2>&1 | tr '\r' '\n' | grep -v 'it/s\]\|s/it\]\|^ *$' | tee "$RES/${NAME}_stdout.txt"
python benchmarks/half_checkpoint.py "runs/$NAME" "runs/${NAME}_fp16"
for pair in "start:$FROM" "$NAME:runs/${NAME}_fp16" ${REF:+"ref:$REF"}; do
    label=${pair%%:*} model=${pair#*:}
    dl evaluate "$model" /tmp/ma_test --split test --out "$RES/eval_$label" --device "$DEVICE"
    dl evaluate "$model" /tmp/ma_test --split test --out "$RES/eval_${label}_tta" --tta \
        --device "$DEVICE"
done
for base in start ${REF:+ref}; do
    for kind in "" _tta; do
        python benchmarks/compare_predictions.py "$RES/eval_$base$kind/predictions.csv" \
            "$RES/eval_$NAME$kind/predictions.csv" --json "$RES/compare_$base${kind}_$NAME$kind.json"
    done
done
cp "runs/$NAME/metrics.csv" "$RES/${NAME}_metrics.csv"
cp "runs/$NAME/config.yaml" "$RES/${NAME}_config.yaml"
cp "runs/$NAME/best.json" "$RES/${NAME}_best.json"
tar -C "$RES" -cf "$OUT/ft.tar" . && tar -C runs -cf "$OUT/weights.tar" "${NAME}_fp16"
