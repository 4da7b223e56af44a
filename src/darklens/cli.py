"""The ``darklens`` command line: argv -> one library call per subcommand.

Library modules are imported inside each handler so ``darklens --help`` stays fast and a broken
optional stage never stops the others.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from darklens import __version__
from darklens.errors import DarklensError


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 0 <= i < n")
    return i, n


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to compute (auto: cuda when available)")


def _cmd_download(a: argparse.Namespace) -> int | None:
    from darklens.data.download import download

    return download(a.source, out=a.out, force=a.force)


def _cmd_inspect(a: argparse.Namespace) -> int | None:
    from darklens.data.inspect import run_inspect

    return run_inspect(a.data, allow_pickle=a.allow_pickle, as_json=a.json)


def _cmd_simulate(a: argparse.Namespace) -> int | None:
    from darklens.config import parse_set_args
    from darklens.sim import simulate_dataset

    simulate_dataset(
        a.out, preset=a.preset, n_train=a.train, n_val=a.val, n_test=a.test, seed=a.seed,
        device=a.device, batch=a.batch, shard=a.shard, overrides=parse_set_args(a.set),
        backend=a.backend,
    )
    return 0


def _cmd_train(a: argparse.Namespace) -> int | None:
    from darklens.config import parse_set_args
    from darklens.train import train

    train(
        a.data, model=a.model, out=a.out, recipe=a.recipe, epochs=a.epochs, batch=a.batch,
        lr=a.lr, device=a.device, resume=a.resume, seed=a.seed, allow_pickle=a.allow_pickle,
        overrides=parse_set_args(a.set),
    )
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int | None:
    from darklens.evaluation import evaluate

    report = evaluate(a.model, a.data, split=a.split, out=a.out, tta=a.tta,
                      allow_pickle=a.allow_pickle, device=a.device)
    auc, ci = report["auc"]["macro"], report["ci95"]["macro_auc"]
    auc_text = ("n/a (a class is missing)" if auc is None else f"{auc:.4f}" + (
        f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""))
    print(f"{report['n']} images of split {a.split}: accuracy {report['accuracy']:.4f}, macro "
          f"AUC {auc_text} -> {Path(a.out) / 'report.md'}")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int | None:
    from darklens.evaluation import predict

    return predict(a.model, a.inputs, out=a.out, skip_bad=a.skip_bad, tta=a.tta,
                   allow_pickle=a.allow_pickle, device=a.device)


def _cmd_export(a: argparse.Namespace) -> int | None:
    from darklens.evaluation import export_onnx

    export_onnx(a.model, a.onnx)
    print(f"wrote {a.onnx}")
    return 0


def _cmd_models(a: argparse.Namespace) -> int | None:
    from darklens.models.listing import print_models

    print_models(pattern=a.pattern)
    return 0


def _cmd_demo(a: argparse.Namespace) -> int | None:
    from darklens.demo import run_demo

    run_demo(out=a.out, device=a.device)
    return 0


PICKLE_HELP = "load pickled .npy files (Model I axion); runs code from the file"

#: ``darklens train --help``'s list of ``--set`` keys; tests/test_cli_help.py keeps it equal to
#: TrainConfig's fields (written out so that building the parser does not import torch)
TRAIN_SET_KEYS = """\
--set KEY=VALUE keys (defaults: the recipe's; a run's config.yaml lists every value it used):
  optimisation: lr, weight_decay, batch_size, epochs, warmup_epochs, label_smoothing,
                plain_ce_during_warmup, grad_clip, fused_optimizer, ema_decay
  speed:        amp (bf16|none), channels_last, compile (auto|on|off), eval_batch_size
  data:         augment (d4|none), subtract, val_fraction, bn_recalib_batches, tta_val
  time:         time_limit_min (total minutes, then stop; --resume may change it),
                budget_min (fit the epochs to it)
  sim:PRESET:   sim_steps_per_epoch, sim_val_per_class, sim_set (simulator overrides),
                sim_mass_boost, sim_boost_fraction (a curriculum, heavier substructure
                first; fast recipe on sim:model_a: 10, 0.5; sim_mass_boost=1: off),
                signal_weight, signal_stage (a training-only head learns where the
                substructure is; timm models such as ResNets; 0: off, the default)
  model:        model_kwargs (YAML mapping, e.g. "{seed_exact: true}"),
                init_from (fine-tuning, start from the weights of a run folder,
                checkpoint or shipped pretrained model of the same model)
  also:         recipe, model, seed (give them as --recipe, --model, --seed)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darklens",
        description="Find dark matter substructure in strong gravitational lenses.",
    )
    parser.add_argument("--version", action="version", version=f"darklens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("download", help="fetch and safely unpack a public DeepLense dataset")
    p.add_argument("source", help="dataset NAME (common-test, model-i, ...), http(s) URL or .zip")
    p.add_argument("--out", required=True, help="folder to unpack into")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("inspect", help="check a dataset: counts, shapes, problems, leakage")
    p.add_argument("data", help="dataset folder or .zip")
    p.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("simulate", help="simulate a lensing dataset (Common Test layout)")
    p.add_argument("out", help="output folder")
    p.add_argument("--preset", default="model_a", help="simulation preset (default model_a)")
    p.add_argument("--train", type=int, required=True, help="training images per class")
    p.add_argument("--val", type=int, required=True, help="validation images per class")
    p.add_argument("--test", type=int, default=0, help="test images per class")
    p.add_argument("--seed", type=int, default=0)
    _add_device(p)
    p.add_argument("--batch", type=int, default=None, help="images per simulated batch")
    p.add_argument("--shard", type=_shard, default=(0, 1), help="write only part i of n (i/n)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset range")
    p.add_argument("--backend", default="auto", choices=["auto", "eager", "compile", "fused"],
                   help="renderer: auto = fused Triton kernels on CUDA, eager torch on the CPU; "
                        "shards of one dataset must use the same")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("train", help="train a classifier", epilog=TRAIN_SET_KEYS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="dataset folder or .zip, or sim:PRESET for on-the-fly data")
    p.add_argument("--model", default="densenet_cbam", help="registered model name")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--recipe", default="fast", choices=["fast", "seed"],
                   help="fast (default): bf16, compile, EMA, larger batches; seed: the "
                        "notebook's hyper-parameters exactly")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--batch", type=int, default=None,
                   help="global batch size (default: the recipe's: fast 256, seed 64)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the "
                                                          "recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, batches, augmentation "
                                                       "and sim: stream (default 0)")
    _add_device(p)
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.*")
    p.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="score a model: AUCs, ROC, confusion, calibration")
    p.add_argument("model", help="run folder, checkpoint file or pretrained:<name>")
    p.add_argument("data", help="dataset folder or .zip")
    p.add_argument("--split", default="test", choices=["val", "test", "all"],
                   help="split to score (default test); all: every split, train included. "
                        "Images a run trained on are refused, by content hash")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--tta", action="store_true", help="average the 8 D4 rotations/flips")
    p.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    _add_device(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities for .npy files, folders or zips")
    p.add_argument("model", help="run folder, checkpoint file or pretrained:<name>")
    p.add_argument("inputs", nargs="+", help=".npy files, folders or zips")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files, list them")
    p.add_argument("--tta", action="store_true", help="average the 8 D4 rotations/flips")
    p.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    _add_device(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export a model to ONNX")
    p.add_argument("model", help="run folder, checkpoint file or pretrained:<name>")
    p.add_argument("--onnx", required=True,
                   help="output .onnx file; its input is the preprocessed image (pixel - the "
                        "checkpoint's preprocessing.subtract, 0.5 for darklens runs), "
                        "shape (N, 1, H, W)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("models", help="list registered models and shipped pretrained weights")
    p.add_argument("pattern", nargs="?", default="*", help="glob on the name, e.g. 'resnet*'")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("demo", help="simulate, train, evaluate: the whole job on a small CPU")
    p.add_argument("--out", default="runs/demo",
                   help="folder for the demo's data, run and reports (default: runs/demo); a "
                        "rerun replaces only the sub-folders an earlier demo made there")
    _add_device(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def _os_error_line(e: OSError) -> str:
    """``<path>: <strerror>`` when the error names a path, else its text, one line."""
    reason = (e.strerror or str(e) or type(e).__name__).splitlines()[0]
    if e.filename is None:
        return reason
    target = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
    return f"{target}: {reason}"


def _one_line_warnings() -> None:
    """darklens' own warnings print as one line, like its errors; other libraries' keep their
    file and line, which is what a bug report about them needs."""
    import warnings

    default = warnings.formatwarning
    if getattr(default, "darklens", False):  # installed by an earlier main() in this process
        return
    package = str(Path(__file__).resolve().parent)

    def fmt(message, category, filename, lineno, line=None):
        if str(Path(filename).resolve()).startswith(package):
            return f"darklens: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    fmt.darklens = True
    warnings.formatwarning = fmt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    try:
        code = args.func(args)
    except DarklensError as e:
        print(f"darklens: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # last line of defence (disk full, permissions, a path that turned into a folder):
        # the stages check their paths up front, but the file system can still say no
        print(f"darklens: error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("darklens: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
