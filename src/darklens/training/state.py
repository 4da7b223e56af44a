"""Everything a run needs to continue after a crash, and the per-epoch metrics table.

``RUN/last.state.pt`` holds model, EMA, optimizer, scheduler, every RNG state, the epoch and the
metrics history. It is written with ``torch.save`` atomically and read back with
``weights_only=True`` (no arbitrary unpickling). Batch order and augmentation are derived from
(seed, epoch), so with these states an interrupted epoch re-runs exactly as it first would have.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from darklens.config import atomic_write_text, usual_permissions
from darklens.errors import DarklensError

STATE_NAME = "last.state.pt"
METRICS_NAME = "metrics.csv"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states in a weights_only-loadable form."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_state(run: Path, state: dict[str, Any]) -> None:
    """Write the run state atomically (tmp file + os.replace): a kill never leaves half a file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    fd, tmp = tempfile.mkstemp(dir=run, prefix=f".{STATE_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        usual_permissions(tmp)
        os.replace(tmp, run / STATE_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(run: Path) -> dict[str, Any]:
    path = run / STATE_NAME
    if not path.exists():
        raise DarklensError(f"{run}: nothing to resume (no {STATE_NAME}); run without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: one line, no traceback
        raise DarklensError(f"{path}: cannot read run state: truncated, corrupt or not a "
                            f"darklens state ({type(e).__name__})") from None


def write_metrics_csv(run: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite RUN/metrics.csv from the full history (on resume, rows past the state vanish)."""
    if not rows:
        return
    fields = list(rows[0])
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for row in rows:
        w.writerow({k: _fmt(row.get(k)) for k in fields})
    atomic_write_text(run / METRICS_NAME, buf.getvalue())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return v
