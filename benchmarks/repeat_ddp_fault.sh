#!/usr/bin/env bash
# How often does the 2-process gloo compile-fault run (tests/scripts/ddp_compile_fault.py,
# the case tests/test_train.py covers) fail? It aborted at exit now and then ("terminate called
# without an active exception") until training.distributed.cleanup collected garbage before
# destroy_process_group. Runs it N times on the CPU, prints the failures and their count.
#
#   PYTHONPATH=src bash benchmarks/repeat_ddp_fault.sh 60 backward
set -uo pipefail
N=${1:-25} WHERE=${2:-backward} PY=${PYTHON:-python}
WORK=$(mktemp -d)
export DARKLENS_CACHE=$WORK/cache OMP_NUM_THREADS=1
"$PY" -c "import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from train_fixtures import write_dataset
write_dataset(Path('$WORK/ds'), n_train=32, n_val=12)" || exit
fails=0
for i in $(seq 1 "$N"); do
    if ! "$PY" -m torch.distributed.run --nproc_per_node 2 --standalone \
            tests/scripts/ddp_compile_fault.py "$WORK/ds" "$WORK/out$i" "$WHERE" \
            > "$WORK/log$i.txt" 2>&1; then
        fails=$((fails + 1))
        echo "run $i failed: $(grep -m1 -i 'terminate\|error' "$WORK/log$i.txt")"
    fi
done
echo "failed: $fails of $N runs ($WHERE), logs in $WORK"
