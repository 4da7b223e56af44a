"""Copy a run's best checkpoint with float16 weights, for shipping: half the bytes.

    python benchmarks/half_checkpoint.py runs/slim runs/slim_fp16
    darklens evaluate runs/slim_fp16 DATA --split test --out EVAL      # score what will ship
    python benchmarks/package_pretrained.py runs/slim_fp16 --report EVAL/report.json ...

Shipped weights live inside the wheel (issue 5: at most 20 MB each). float16 keeps 11
significant bits, about 3 decimal digits: far finer than the noise in any trained weight, and
:func:`darklens.checkpoint.load_checkpoint` copies the values into the model's float32
parameters, so inference still runs in float32. The copy is a run folder of its own (``best.*``,
``config.yaml``) whose JSON names the weights it came from; it must be scored again before it is
packaged, because its numbers are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from darklens.checkpoint import META_SUFFIX, WEIGHTS_SUFFIX, file_sha256, load_checkpoint
from darklens.errors import DarklensError


def half_copy(run: str | Path, out: str | Path) -> Path:
    """Write ``out/best.*``: ``run/best.*`` with every floating tensor stored as float16.

    Everything is written into a hidden sibling folder that becomes ``out`` in one rename, so a
    failure leaves no partial ``out`` behind.
    """
    from safetensors.torch import save_file

    run, out = Path(run), Path(out)
    weights = run / ("best" + WEIGHTS_SUFFIX)
    if not weights.is_file():
        raise DarklensError(f"{weights}: missing (RUN must hold the best checkpoint of a run)")
    if out.exists():
        raise DarklensError(f"{out}: already exists; give a new folder")
    # load_checkpoint reads the pair, checks the sha256 and that the weights fit the model
    model, meta = load_checkpoint(weights)
    meta.pop("source")
    source_sha = file_sha256(weights)
    half = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            if not torch.isfinite(value).all():
                raise DarklensError(f"{weights}: {key} holds NaN or infinity")
            value = value.half()
            if not torch.isfinite(value).all():
                raise DarklensError(f"{weights}: {key} does not fit in float16 (|value| > 65504)")
        half[key] = value  # integer buffers (BatchNorm's step count) keep their dtype

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the run from other users
        save_file(half, str(tmp / ("best" + WEIGHTS_SUFFIX)), metadata={"format": "pt"})
        os.chmod(tmp / ("best" + WEIGHTS_SUFFIX), 0o644)
        # config.yaml, and the training images' hashes: evaluate refuses those for the copy too
        for name in ("config.yaml", "train_sha256.txt"):
            if (run / name).is_file():
                shutil.copyfile(run / name, tmp / name)
        meta["weights_sha256"] = file_sha256(tmp / ("best" + WEIGHTS_SUFFIX))
        meta["weights_dtype"] = "float16"
        meta["converted_from"] = {"run": str(run), "weights_sha256": source_sha}
        (tmp / ("best" + META_SUFFIX)).write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(tmp, out)
    except OSError as e:
        raise DarklensError(f"{out}: cannot write the float16 copy ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after the rename
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder holding best.*")
    p.add_argument("out", help="new run folder for the float16 copy")
    args = p.parse_args(argv)
    try:
        out = half_copy(args.run, args.out)
    except DarklensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = (out / ("best" + WEIGHTS_SUFFIX)).stat().st_size
    print(f"wrote {out}/best{WEIGHTS_SUFFIX} ({size / 1e6:.2f} MB, float16); score it with "
          "darklens evaluate before packaging")
    return 0


if __name__ == "__main__":
    sys.exit(main())
