"""``darklens inspect``: the data doctor.

Counts per split and class, image shape, dtypes, value range, and every problem with the file(s)
it concerns: unreadable files, pickles without the flag, NaN/Inf, constant images, odd sizes,
empty or unknown folders, duplicates inside a split, and leakage (one image in two splits: the
seed notebook scored its "validation" on training images; this check would have caught it).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from darklens import CLASSES
from darklens.data.cache import load_or_build
from darklens.data.layout import list_dataset


def inspect_dataset(root: str | Path, allow_pickle: bool = False, progress: bool = True) -> dict:
    """Read a dataset and report counts and problems (the dict ``inspect --json`` prints)."""
    root = Path(root)
    listing = list_dataset(root)
    packed = load_or_build(listing, allow_pickle, progress=progress)
    records = packed.records
    problems = [p.as_dict() for p in packed.problems]

    splits: dict[str, dict[str, int]] = {s: dict.fromkeys(CLASSES, 0) for s in listing.splits}
    for r in records:
        splits.setdefault(r["split"], dict.fromkeys(CLASSES, 0))[CLASSES[r["label"]]] += 1

    lo = [r["min"] for r in records if r["finite"]]
    hi = [r["max"] for r in records if r["finite"]]
    for r in records:
        if not r["finite"]:
            problems.append(_problem("nan_inf", r["path"], "image holds NaN or Inf pixels"))
        elif r["min"] == r["max"]:
            problems.append(_problem("constant", r["path"], f"every pixel equals {r['min']:g}"))

    by_hash: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_hash[r["sha256"]].append(r)
    for group in by_hash.values():
        if len(group) < 2:
            continue
        first_in_split: dict[str, dict] = {}
        for r in group:
            if r["split"] not in first_in_split:
                first_in_split[r["split"]] = r
            else:
                problems.append(_problem(
                    "duplicate", r["path"],
                    f"same pixels as {first_in_split[r['split']]['path']} (same split)"))
        if len(first_in_split) > 1:
            reps = list(first_in_split.values())
            for r in reps[1:]:
                problems.append(_problem(
                    "leakage", r["path"],
                    f"same image as {reps[0]['path']} in split {reps[0]['split']!r}"))

    return {
        "root": str(root),
        "splits": splits,
        "n_images": len(records),
        "image_shape": packed.manifest["image_shape"],
        "dtypes": sorted({r["dtype"] for r in records}),
        "value_range": [min(lo), max(hi)] if lo else None,
        "problems": problems,
        "cache": str(packed.directory),
    }


def _problem(kind: str, path: str, detail: str) -> dict:
    return {"kind": kind, "path": path, "detail": detail}


def format_report(report: dict, max_problems: int = 20) -> str:
    """A human-readable summary of an ``inspect_dataset`` report."""
    lines = [f"dataset: {report['root']}"]
    shape = report["image_shape"]
    lines.append(f"images: {report['n_images']}" + (f" of {shape[0]}x{shape[1]}" if shape else "")
                 + (f", dtype {', '.join(report['dtypes'])}" if report["dtypes"] else ""))
    if report["value_range"]:
        lo, hi = report["value_range"]
        lines.append(f"values: {lo:.6g} .. {hi:.6g}")
    width = max([5, *(len(s) for s in report["splits"])])
    lines.append(f"{'split':<{width}}  " + "  ".join(f"{c:>7}" for c in CLASSES) + "    total")
    for split, counts in report["splits"].items():
        total = sum(counts.values())
        lines.append(f"{split:<{width}}  " + "  ".join(f"{counts[c]:>7}" for c in CLASSES)
                     + f"  {total:>7}")
    problems = report["problems"]
    if not problems:
        lines.append("problems: none")
    else:
        kinds = defaultdict(int)
        for p in problems:
            kinds[p["kind"]] += 1
        lines.append(f"problems: {len(problems)} ("
                     + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")")
        for p in problems[:max_problems]:
            lines.append(f"  {p['kind']}: {p['path']}: {p['detail']}")
        if len(problems) > max_problems:
            lines.append(f"  ... {len(problems) - max_problems} more (--json lists them all)")
    return "\n".join(lines)


def run_inspect(root: str | Path, allow_pickle: bool = False, as_json: bool = False) -> int:
    """The ``darklens inspect`` command: print the report; exit 1 when there is a problem."""
    report = inspect_dataset(root, allow_pickle=allow_pickle, progress=not as_json)
    if as_json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 1 if report["problems"] else 0
