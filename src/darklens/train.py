"""``darklens train``: the training loop, single process or DDP under ``torchrun``.

Two recipes. ``seed`` is the notebook's recipe exactly (AdamW 3e-4, wd 1e-5, batch 64, 20
epochs, cosine with 3 warm-up epochs, cross-entropy then label smoothing 0.1, pixel - 0.5, fp32,
no augmentation). ``fast`` (default): D4 augmentation on the device, bf16 autocast on CUDA,
channels_last, batch 256, fused AdamW 1e-3 with gradient clipping, EMA weights whose BatchNorm
statistics are re-estimated before each validation, and ``torch.compile`` of the training
forward on CUDA (checked on a trial step, eager if it fails; ``--set compile=off`` skips it).
On ``sim:model_a`` data ``fast`` also trains with a substructure-mass curriculum (the first half
of the epochs on up to 10x heavier subhalos and vortices; ``--set sim_mass_boost=1`` turns it
off; see ``CURRICULUM_PRESETS``).

Outputs in RUN: ``config.yaml`` (resolved config + seed), ``metrics.csv`` (one row per epoch),
``last.*`` / ``best.*`` checkpoints (safetensors + JSON, best by val macro AUC) and
``last.state.pt`` (everything ``--resume`` needs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from darklens import CLASSES
from darklens.config import apply_overrides, parse_set_args, save_yaml, to_dict
from darklens.errors import DarklensError
from darklens.training import data as tdata
from darklens.training import distributed, loop, state


@dataclass
class TrainConfig:
    """Every knob of a run; ``--set key=value`` overrides any of them."""

    recipe: str = "fast"
    model: str = "densenet_cbam"
    model_kwargs: str = "{}"  # YAML mapping passed to create_model, e.g. "{seed_exact: true}"
    epochs: int = 30
    batch_size: int = 256  # global: split evenly over DDP ranks
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    plain_ce_during_warmup: bool = False  # the seed's trick: CE first, smoothing after warm-up
    augment: str = "d4"  # "d4" or "none"
    # "bf16" or "none": autocast of the training steps (on CUDA only). Validation and its BN
    # re-estimation always run in IEEE fp32, as evaluate and predict do (_validation_pass).
    amp: str = "bf16"
    channels_last: bool = True
    # torch.compile the training forward: "auto" = on CUDA only (1.5x on an H100, ~45 s to
    # compile, benchmarks/train_step_probe.py), "on" = also on the CPU, "off" = never
    compile: str = "auto"
    fused_optimizer: bool = True  # fused AdamW kernel (False: torch's default, the notebook's)
    ema_decay: float = 0.998  # 0 disables EMA
    bn_recalib_batches: int = 16  # re-estimate BN statistics before each validation (0: off)
    tta_val: bool = False  # average the 8 D4 views when validating
    grad_clip: float = 1.0  # max gradient norm (0: no clipping)
    subtract: float = 0.5  # model preprocessing: pixel - subtract
    val_fraction: float = 0.1  # used when the dataset has no val split
    eval_batch_size: int = 512
    # stop after the epoch at which the run's training time (over all its resumes) passes this
    # many minutes (0: none); unlike every other key, --resume may change it (RESUME_MAY_CHANGE)
    time_limit_min: float = 0.0
    # fit the schedule to a time budget: after epoch 1, run only the epochs (at most `epochs`)
    # that fit in this many minutes, with the cosine ending at the last one (0: off)
    budget_min: float = 0.0
    sim_steps_per_epoch: int = 200  # sim:PRESET only
    sim_val_per_class: int = 500
    sim_set: list = field(default_factory=list)  # simulator overrides, e.g. [image_size=64]
    # sim:PRESET only, a curriculum: the first sim_boost_fraction of the run's epochs (after
    # budget_min has fitted them; at least one) train on substructure sim_mass_boost times
    # heavier, the factor falling geometrically to 1; validation, BN statistics and every later
    # epoch use the preset's own masses. 1 / 0: off (the fast recipe turns it on for the
    # presets in CURRICULUM_PRESETS).
    sim_mass_boost: float = 1.0
    sim_boost_fraction: float = 0.0
    # sim:PRESET only, signal supervision (darklens.training.signal): a training-only head on
    # feature stage signal_stage learns each image's substructure chi-square map, its loss
    # weighted by signal_weight beside the classification loss (0: off). Checkpoints hold the
    # model alone.
    signal_weight: float = 0.0
    signal_stage: int = 2
    # fine-tuning: start from these weights instead of a random init. Any model spec that
    # evaluate takes (run folder, .safetensors/.json, pretrained:NAME); its model, model_kwargs
    # and subtract must match this run's. Optimizer, schedule and EMA start afresh.
    init_from: str = ""
    seed: int = 0


RECIPES: dict[str, dict[str, Any]] = {
    # the curriculum, on the presets in CURRICULUM_PRESETS only (_recipe_curriculum): on an
    # H200, resnet18 on model_a went from 0.674 to 0.717 test accuracy for the same 3.7 M
    # images (BENCHMARKS.md, session 9)
    "fast": dict(sim_mass_boost=10.0, sim_boost_fraction=0.5),
    "seed": dict(epochs=20, batch_size=64, lr=3e-4, weight_decay=1e-5, warmup_epochs=3.0,
                 label_smoothing=0.1, plain_ce_during_warmup=True, augment="none", amp="none",
                 channels_last=False, compile="off", fused_optimizer=False, ema_decay=0.0,
                 tta_val=False, grad_clip=0.0, bn_recalib_batches=0),
}


def build_config(*, recipe: str, model: str, epochs: int | None, batch: int | None,
                 lr: float | None, seed: int, overrides: dict[str, Any] | None) -> TrainConfig:
    """Recipe defaults, then explicit arguments, then ``--set`` overrides (checked)."""
    if recipe not in RECIPES:
        raise DarklensError(f"unknown recipe {recipe!r} (choose from {', '.join(RECIPES)})")
    config = dataclasses.replace(TrainConfig(), recipe=recipe, model=model, seed=seed,
                                 **RECIPES[recipe])
    explicit = {"epochs": epochs, "batch_size": batch, "lr": lr}
    explicit = {k: v for k, v in explicit.items() if v is not None}
    _refuse_two_values(explicit, {"model": model, "recipe": recipe, "seed": seed},
                       overrides or {})
    config = dataclasses.replace(config, **explicit)
    config = apply_overrides(config, overrides or {}, what="train config")
    _validate(config)
    return config


def _refuse_two_values(explicit: dict[str, Any], always: dict[str, Any],
                       overrides: dict[str, Any]) -> None:
    """A flag and a ``--set`` of the same setting with different values: which one was meant
    is a guess, so neither wins silently."""
    flags = {"epochs": "--epochs", "batch_size": "--batch", "lr": "--lr", "model": "--model",
             "recipe": "--recipe", "seed": "--seed"}
    # model, recipe and seed always arrive (the CLI's defaults): given only when not the default
    given = {k: v for k, v in always.items() if v != _ALWAYS_PASSED[k]}
    for key, value in {**explicit, **given}.items():
        if key in overrides:
            other = apply_overrides(TrainConfig(), {key: overrides[key]}, what="train config")
            if getattr(other, key) != value:
                raise DarklensError(f"{flags[key]} {value} and --set {key}={overrides[key]} "
                                    "disagree; give the setting once")


#: ``train()`` arguments that always arrive (the CLI passes its defaults): on ``--resume`` a value
#: other than this default counts as given explicitly and must match the saved run
_ALWAYS_PASSED = {"model": "densenet_cbam", "recipe": "fast", "seed": 0}

#: keys ``--resume`` may change: they say when this run stops, not what it computes, so a run
#: cut into time-limited pieces (preemptible or wall-limited jobs) ends as one run would
RESUME_MAY_CHANGE = ("time_limit_min",)


def resume_conflicts(saved: TrainConfig, saved_data: str, *, data: str, recipe: str,
                     model: str, epochs: int | None, batch: int | None, lr: float | None,
                     seed: int, overrides: dict[str, Any] | None) -> list[str]:
    """The explicitly given settings that differ from the saved run, as ``"key old -> new"``.

    ``--resume`` continues the saved run exactly; it never changes it. In particular a larger
    ``--epochs`` is refused rather than "extending" the run: the cosine schedule's length is
    ``epochs * steps``, so a longer one would lift the LR at the resumed step from near zero back
    up (a warm restart), and the result would match neither the saved run nor a fresh run of
    that length. Settings left out (None, or a CLI default in ``_ALWAYS_PASSED``) are taken from
    the saved run; the keys in ``RESUME_MAY_CHANGE`` are never conflicts.
    """
    given: dict[str, Any] = {"epochs": epochs, "batch_size": batch, "lr": lr}
    given = {k: v for k, v in given.items() if v is not None}
    for key, value in {"model": model, "recipe": recipe, "seed": seed}.items():
        if value != _ALWAYS_PASSED[key]:
            given[key] = value
    requested = apply_overrides(dataclasses.replace(saved, **given), overrides or {},
                                what="train config")  # unknown keys / bad types: one line
    keys = [*given, *(k.split(".")[0] for k in (overrides or {}))]
    changes = []
    for key in dict.fromkeys(keys):
        if key in RESUME_MAY_CHANGE:
            continue
        old, new = getattr(saved, key), getattr(requested, key)
        if old != new:
            changes.append(f"{key} {old} -> {new}")
    if not _same_data(saved_data, data):
        changes.append(f"data {saved_data} -> {data}")
    return changes


def _same_data(a: str, b: str) -> bool:
    if a == b:
        return True
    if tdata.sim_preset(a) is not None or tdata.sim_preset(b) is not None:
        return False
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _validate(c: TrainConfig) -> None:
    for key, value in (("epochs", c.epochs), ("batch_size", c.batch_size), ("lr", c.lr)):
        if not (math.isfinite(value) and value > 0):
            raise DarklensError(f"{key}={value:g} (--{key.split('_')[0]} or --set): must be "
                                "positive")
    if not 0 < c.val_fraction < 1:
        raise DarklensError(f"val_fraction={c.val_fraction:g}: expected a number in (0, 1)")
    if c.augment not in ("d4", "none"):
        raise DarklensError(f"augment={c.augment!r}: expected d4 or none")
    if c.amp not in ("bf16", "none"):
        raise DarklensError(f"amp={c.amp!r}: expected bf16 or none")
    if c.compile not in ("auto", "on", "off"):
        raise DarklensError(f"compile={c.compile!r}: expected auto, on or off")
    for key in ("time_limit_min", "budget_min"):
        minutes = getattr(c, key)
        if not (math.isfinite(minutes) and minutes >= 0):
            raise DarklensError(f"{key}={minutes:g}: expected minutes >= 0 (0: off)")
    if not (math.isfinite(c.sim_mass_boost) and c.sim_mass_boost >= 1
            and 0 <= c.sim_boost_fraction < 1):
        raise DarklensError(f"sim_mass_boost={c.sim_mass_boost:g}, sim_boost_fraction="
                            f"{c.sim_boost_fraction:g}: expected a finite boost >= 1 and a "
                            "fraction in [0, 1) (the run must end on the preset's masses)")
    if not (math.isfinite(c.signal_weight) and c.signal_weight >= 0):
        raise DarklensError(f"signal_weight={c.signal_weight:g}: expected a finite weight >= 0 "
                            "(0: off)")
    if c.signal_weight == 0 and c.signal_stage != TrainConfig.signal_stage:
        raise DarklensError(f"signal_stage={c.signal_stage}: has no effect without "
                            "signal_weight > 0")
    _model_kwargs(c)
    from darklens.models import check_model_name  # registry filled by the model modules

    check_model_name(c.model)  # before any data is read or any folder is made


def _curriculum_on(c: TrainConfig) -> bool:
    return c.sim_mass_boost != 1 and c.sim_boost_fraction > 0


#: where the fast recipe's curriculum applies: presets whose substructure is faint and on which
#: it was measured to help (model_a: H200, 0.674 -> 0.717 test accuracy for the same images).
#: On model_ii, whose substructure a small CPU model learns to 0.99, it did not help (0.992
#: without, 0.987 with, within noise), so it stays off there (BENCHMARKS.md, session 9).
CURRICULUM_PRESETS = ("model_a",)


def _recipe_curriculum(config: TrainConfig, data: str, *, asked: set) -> TrainConfig:
    """Turn the recipe's curriculum off where it does not apply: dataset folders (their images
    are fixed) and ``sim:`` presets outside ``CURRICULUM_PRESETS``, so config.yaml says what
    ran. A user who gave either key (``asked``: the ``--set`` keys) gets exactly what they
    asked for, completed by the recipe, and ``--resume`` with the same ``--set`` matches."""
    off = {"sim_mass_boost": 1.0, "sim_boost_fraction": 0.0}
    if tdata.sim_preset(data) in CURRICULUM_PRESETS or asked & set(off):
        return config
    return dataclasses.replace(config, **off)


def _boost_epochs(c: TrainConfig, end_epoch: int) -> int:
    """Epochs the mass curriculum spans: its fraction of the (fitted) run, rounded half up, at
    least 1 when it is on (epoch 1 always trains boosted: it runs before budget_min fits)."""
    if not _curriculum_on(c):
        return 0
    return max(1, math.floor(c.sim_boost_fraction * end_epoch + 0.5))


def _check_boost(preset: str, overrides: dict, c: TrainConfig) -> None:
    """Refuse a curriculum whose heaviest substructure would outweigh the lens itself."""
    from darklens.sim.presets import get_config

    if not _curriculum_on(c):
        return
    start = get_config(preset, tdata.mass_boosted(preset, overrides, c.sim_mass_boost, 1, 0))
    for key in ("sub_mass_fraction", "vort_mass_fraction"):
        if getattr(start, key.replace("fraction", "mode")) == "fraction" and \
                max(getattr(start, key)) > 1:
            raise DarklensError(f"sim_mass_boost={c.sim_mass_boost:g} (the mass curriculum; "
                                f"the fast recipe's default is 10): {key} would start at "
                                f"{list(getattr(start, key))}, more than the Einstein mass; "
                                "use a smaller boost, or --set sim_mass_boost=1 for none")


def _model_kwargs(c: TrainConfig) -> dict:
    try:
        kwargs = yaml.safe_load(c.model_kwargs) if c.model_kwargs else {}
    except yaml.YAMLError:
        kwargs = None
    if not isinstance(kwargs, dict):
        raise DarklensError(f"model_kwargs={c.model_kwargs!r}: expected a mapping like "
                            "{seed_exact: true}")
    return kwargs


def _init_weights(c: TrainConfig) -> tuple[dict, dict]:
    """The weights ``init_from`` names, checked against the run: the same model, model kwargs
    and preprocessing, since weights fitted to other inputs would start from a wrong place
    silently. Returns the state_dict and what config.yaml records about its source."""
    from darklens.checkpoint import (
        PRETRAINED_PREFIX,
        clean_state_dict,
        file_sha256,
        load_checkpoint,
    )

    spec = f"init_from={c.init_from}"
    try:
        source, meta = load_checkpoint(c.init_from)
    except DarklensError as e:  # say which setting named the file
        raise DarklensError(f"{spec}: {e}") from None
    if meta["model"] != c.model:
        raise DarklensError(f"{spec}: holds model {meta['model']!r}, this run trains "
                            f"{c.model!r}; pass --model {meta['model']}")
    if dict(meta.get("model_kwargs", {})) != _model_kwargs(c):
        raise DarklensError(f"{spec}: its model_kwargs {meta.get('model_kwargs', {})} differ "
                            f"from this run's {_model_kwargs(c)}")
    subtract = (meta.get("preprocessing") or {}).get("subtract")
    if not isinstance(subtract, (int, float)):
        raise DarklensError(f"{spec}: its JSON records no preprocessing.subtract, so its "
                            "inputs cannot be matched to this run's")
    if float(subtract) != c.subtract:
        raise DarklensError(f"{spec}: its inputs were pixel - {subtract:g}, this run's are "
                            f"pixel - {c.subtract:g}; pass --set subtract={subtract:g}")
    # the JSON's hash when it has one (load_checkpoint has checked it), else the file's own
    sha = meta.get("weights_sha256") or (
        None if str(meta["source"]).startswith(PRETRAINED_PREFIX)
        else file_sha256(meta["source"]))
    info = {"from": c.init_from, "weights_sha256": sha, "source": meta.get("source"),
            "input_size": (meta.get("preprocessing") or {}).get("input_size")}
    return clean_state_dict(source), info


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DarklensError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def train(data: str, *, model: str = "densenet_cbam", out: str | Path, recipe: str = "fast",
          epochs: int | None = None, batch: int | None = None, lr: float | None = None,
          device: str = "auto", resume: bool = False, seed: int = 0, allow_pickle: bool = False,
          overrides: dict[str, Any] | None = None) -> Path:
    """Train a classifier on ``data`` and write the run folder ``out``.

    Args:
        data: dataset folder or .zip (anything ``open_dataset`` reads), or ``sim:PRESET``.
        model: registered model name (``darklens models``) or ``timm:<name>``.
        out: run folder (created).
        recipe: ``fast`` (default) or ``seed`` (the notebook's hyper-parameters).
        epochs, batch, lr: override the recipe (None keeps the recipe's value).
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: continue from ``out/last.state.pt`` with the saved config.
        seed: seeds model init, batch order, augmentation and the val split.
        allow_pickle: let the data reader unpickle object .npy files.
        overrides: ``{"dotted.key": "value"}`` from ``--set``.

    Returns:
        The run folder.
    """
    run = Path(out)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    dist_info = distributed.init_distributed(dev)
    try:
        return _train(data, run=run, dev=dev, dist_info=dist_info, resume=resume,
                      allow_pickle=allow_pickle,
                      config_args=dict(recipe=recipe, model=model, epochs=epochs, batch=batch,
                                       lr=lr, seed=seed, overrides=overrides))
    finally:
        distributed.cleanup(dist_info)


def _train(data: str, *, run: Path, dev: torch.device, dist_info: distributed.DistInfo,
           resume: bool, allow_pickle: bool, config_args: dict) -> Path:
    from darklens.checkpoint import PRETRAINED_PREFIX, save_checkpoint
    from darklens.models import create_model
    from darklens.training.signal import SignalSupervised

    saved = None
    show = dist_info.is_main
    if resume:
        saved = state.load_state(run)
        config = apply_overrides(TrainConfig(), saved["config"], what="saved config")
        changes = resume_conflicts(config, saved["data"], data=data, **config_args)
        if changes:
            raise DarklensError(
                f"{run}: --resume continues the saved run unchanged, but these settings differ: "
                f"{'; '.join(changes)}; leave them out to resume, or start a new --out")
        data = saved["data"]
        may_change = {k: v for k, v in (config_args.get("overrides") or {}).items()
                      if k in RESUME_MAY_CHANGE}
        config = apply_overrides(config, may_change, what="train config")
        _validate(config)
        # epochs this run trains: config.epochs, or fewer once budget_min has fitted them
        end_epoch = int(saved.get("fitted_epochs") or config.epochs)
        if int(saved["epoch"]) + 1 >= end_epoch:
            if show:
                print(f"{run}: already finished (epoch {end_epoch} of {end_epoch}); "
                      "nothing to train")
            return run
        _check_time_left(run, config, float(saved.get("elapsed_s", 0.0)))
    else:
        config = _recipe_curriculum(build_config(**config_args), str(data),
                                    asked=set(config_args.get("overrides") or {}))
        end_epoch = config.epochs
        _refuse_to_overwrite(run)
    world = dist_info.world_size
    if config.batch_size % world:
        raise DarklensError(f"batch {config.batch_size} does not split over {world} processes")
    rank_batch = config.batch_size // world
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    # before any data is read: a bad checkpoint must fail in a second, not after simulating
    # (a resumed run keeps what its first piece recorded: its weights replace these anyway)
    init_state, init_info = (_init_weights(config) if config.init_from and saved is None
                             else (None, saved.get("init") if saved is not None else None))

    # --- data -------------------------------------------------------------------------------
    preset = tdata.sim_preset(str(data))
    sim_overrides = parse_set_args([str(s) for s in config.sim_set])
    if preset is not None:
        from darklens.sim.presets import get_config, warn_if_leaky

        warn_if_leaky(get_config(preset, sim_overrides))
        _check_boost(preset, sim_overrides, config)
        if config.signal_weight > 0:  # before any simulating: a model without stages fails
            # on a forked generator: the run's own model must start from the weights that a
            # run without the head gets from the same seed
            with torch.random.fork_rng(devices=[]):
                SignalSupervised(create_model(config.model, in_chans=1,
                                              num_classes=len(CLASSES), **_model_kwargs(config)),
                                 config.signal_stage, config.model)
        val = tdata.simulate_val(preset, config.sim_val_per_class, seed=config.seed + 10_000,
                                 device=dev, overrides=sim_overrides)
        train_split = None
        n_steps = config.sim_steps_per_epoch
        data_info = {"val_source": f"simulated {preset}, {len(val)} images, fixed seed",
                     "n_val": len(val)}
    else:
        if _curriculum_on(config):  # only the user's own --set can turn it on here
            raise DarklensError(f"{data}: sim_mass_boost, sim_boost_fraction: the mass "
                                "curriculum needs sim:PRESET training data (a dataset "
                                "folder's images are fixed)")
        if config.signal_weight > 0:
            raise DarklensError(f"{data}: signal_weight: signal supervision needs sim:PRESET "
                                "training data (only the simulator knows where the "
                                "substructure is)")
        train_split, val, data_info = tdata.load_array_splits(
            str(data), seed=config.seed, val_fraction=config.val_fraction, device=dev,
            allow_pickle=allow_pickle, progress=show)
        n_steps = tdata.steps_per_epoch(len(train_split), rank_batch, world)
        if n_steps == 0:
            raise DarklensError(f"{data}: {len(train_split)} training images are fewer than "
                                f"one batch of {config.batch_size}; pass a smaller --batch")
    input_size = list(val.images.shape[-2:])
    val_labels = val.labels.cpu().numpy()

    # --- model, optimizer, schedule ---------------------------------------------------------
    model_kwargs = _model_kwargs(config)
    net = create_model(config.model, in_chans=1, num_classes=len(CLASSES), **model_kwargs)
    if init_state is not None:  # before the EMA copies the model: it starts from these too
        net.load_state_dict(init_state)
        del init_state
        _warn_if_other_size(config.init_from, init_info.pop("input_size"), input_size)
    if init_info:
        data_info["init"] = init_info
    net = net.to(dev)
    # the network that trains: the model, or the model and a training-only signal head
    trained = net
    if config.signal_weight > 0:
        trained = SignalSupervised(net, config.signal_stage, config.model).to(dev)
    if config.channels_last:
        trained = trained.to(memory_format=torch.channels_last)
    optimizer = loop.make_optimizer(trained.parameters(), lr=config.lr,
                                    weight_decay=config.weight_decay,
                                    fused=config.fused_optimizer)
    warmup_steps = int(round(config.warmup_epochs * n_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, loop.cosine_with_warmup(warmup_steps, end_epoch * n_steps))
    ema = loop.EMA(net, config.ema_decay) if config.ema_decay > 0 else None
    history: list[dict] = []
    best_score = -math.inf
    start_epoch = 0
    elapsed_before = 0.0
    if saved is not None:
        net.load_state_dict(saved["model"])
        if trained is not net:
            trained.head.load_state_dict(saved["signal_head"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(saved["ema"])
            ema.updates = int(saved["ema_updates"])
        history = list(saved["history"])
        best_score = float(saved["best_score"])
        start_epoch = int(saved["epoch"]) + 1
        elapsed_before = float(saved.get("elapsed_s", 0.0))
        state.set_rng_state(saved["rng"])

    train_net = trained
    if dist_info.enabled:
        train_net = torch.nn.parallel.DistributedDataParallel(
            trained, device_ids=[dev.index] if dev.type == "cuda" else None)
    compiled = False
    if config.compile == "on" or (config.compile == "auto" and dev.type == "cuda"):
        train_net, compiled = _try_compile(train_net, dev, config, rank_batch, input_size,
                                           dist_info)

    resolved = {**to_dict(config), "data": str(data), "world_size": world, "device": str(dev),
                "compiled": compiled, "data_info": data_info,
                "amp_in_effect": loop.amp_in_effect(dev, config.amp)}
    if end_epoch < config.epochs:  # a resumed run whose budget already fitted its epochs
        resolved["fitted_epochs"] = end_epoch
    # Training starts: only now does the run folder appear (a refused run leaves nothing).
    run.mkdir(parents=True, exist_ok=True)
    if dist_info.is_main:
        save_yaml(run / "config.yaml", resolved)
        # the images this run's weights have seen: its own, and a fine-tune's source run's
        seen = list(train_split.sha256) if train_split is not None else []
        source = str((data_info.get("init") or {}).get("source") or "")
        if source and not source.startswith(PRETRAINED_PREFIX):
            seen += sorted(tdata.read_train_hashes(Path(source).parent) or ())
        if seen:
            tdata.write_train_hashes(run, seen)
        if data_info.get("stratified_val"):
            tdata.write_val_split(run, seed=config.seed, fraction=config.val_fraction,
                                  val_paths=val.paths)
    preprocessing = {"subtract": config.subtract, "input_size": input_size}

    # --- epochs -----------------------------------------------------------------------------
    t_start = time.perf_counter() - elapsed_before
    for epoch in range(start_epoch, config.epochs):
        smoothing = config.label_smoothing
        if config.plain_ce_during_warmup and epoch < config.warmup_epochs:
            smoothing = 0.0
        if train_split is not None:
            batches = tdata.array_batches(train_split, batch_size=rank_batch, seed=config.seed,
                                          epoch=epoch, rank=dist_info.rank, world_size=world,
                                          augment=config.augment)
        else:
            boost_epochs = _boost_epochs(config, end_epoch)
            boosted = tdata.mass_boosted(preset, sim_overrides, config.sim_mass_boost,
                                         boost_epochs, epoch)
            batches = tdata.sim_batches(preset, batch_size=rank_batch, steps=n_steps,
                                        seed=config.seed, epoch=epoch, rank=dist_info.rank,
                                        device=dev, overrides=boosted, augment=config.augment,
                                        with_signal=config.signal_weight > 0)
        lr_now = optimizer.param_groups[0]["lr"]
        stats = loop.train_one_epoch(
            train_net, batches, n_steps=n_steps, optimizer=optimizer, scheduler=scheduler,
            loss_fn=loop.make_loss(smoothing), subtract=config.subtract, device=dev,
            amp=config.amp, channels_last=config.channels_last, ema=ema,
            grad_clip=config.grad_clip, desc=f"epoch {epoch + 1}/{end_epoch}",
            show_progress=show, signal_weight=config.signal_weight)
        train_loss = distributed.all_reduce_mean(stats["train_loss"], dist_info, dev)
        if stats["skipped_steps"] > max(1, n_steps // 10):
            raise DarklensError(
                f"training diverged: {stats['skipped_steps']} of {n_steps} steps in epoch "
                f"{epoch + 1} had non-finite gradients; try a lower --lr or --set amp=none")
        eval_net, probs = _validation_pass(ema.module if ema is not None else net, val,
                                           config, train_split, preset, rank_batch, epoch,
                                           dist_info, dev, sim_overrides)
        if not np.isfinite(probs).all():
            raise DarklensError(f"epoch {epoch + 1}: the model outputs NaN/Inf on validation; "
                                "try a lower --lr or --set amp=none")
        metrics = loop.epoch_metrics(val_labels, probs)
        elapsed = time.perf_counter() - t_start
        row = {"epoch": epoch + 1, "lr": lr_now, "train_loss": train_loss, **metrics,
               "train_images": stats["images"] * world,
               "skipped_steps": stats["skipped_steps"],
               "train_images_per_s": stats["images"] * world / stats["seconds"],
               "epoch_train_s": stats["seconds"], "elapsed_s": elapsed}
        if "signal_loss" in stats:
            row["train_signal_loss"] = distributed.all_reduce_mean(stats["signal_loss"],
                                                                   dist_info, dev)
        history.append(row)
        if epoch == 0 and config.budget_min > 0:
            fitted = distributed.broadcast_int(
                _epochs_in_budget(elapsed, config.budget_min, config.epochs), dist_info, dev)
            if fitted < end_epoch:
                end_epoch = fitted
                scheduler.lr_lambdas[0] = loop.cosine_with_warmup(warmup_steps,
                                                                  end_epoch * n_steps)
                resolved["fitted_epochs"] = end_epoch
                if dist_info.is_main:
                    save_yaml(run / "config.yaml", resolved)
                    print(f"budget {config.budget_min:g} min: epoch 1 took {elapsed:.1f} s, so "
                          f"{end_epoch} of {config.epochs} epochs (the schedule now ends there)")
        score = metrics["auc_macro"] if not math.isnan(metrics["auc_macro"]) else -1.0
        improved = score > best_score
        best_score = max(best_score, score)
        if dist_info.is_main:
            _save_epoch(run, save_checkpoint, eval_net, config, model_kwargs, preprocessing,
                        resolved, row, improved, history)
            state.save_state(run, {
                "config": to_dict(config), "data": str(data), "epoch": epoch,
                "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                **({"signal_head": trained.head.state_dict()} if trained is not net else {}),
                "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else {},
                "ema_updates": ema.updates if ema is not None else 0,
                "history": history, "best_score": best_score, "elapsed_s": elapsed,
                "init": data_info.get("init"),
                "fitted_epochs": end_epoch if end_epoch < config.epochs else None,
                "rng": state.rng_state()})
            print(_summary(row), flush=True)
        distributed.barrier(dist_info)
        over = _limit_spent(config, elapsed)
        if distributed.broadcast_flag(over, dist_info, dev) and epoch + 1 < end_epoch:
            if show:
                print(f"time limit {config.time_limit_min:g} min reached after epoch {epoch + 1}")
            break
        if epoch + 1 >= end_epoch:
            break
    return run


def _warn_if_other_size(spec: str, source_size: list | None, input_size: list) -> None:
    """Weights fitted to another image size load (the networks pool globally), but start from
    features of another pixel scale: worth a warning, not an error."""
    if source_size and list(source_size) != list(input_size):
        warnings.warn(f"init_from={spec}: its images were {source_size[0]}x{source_size[1]}, "
                      f"this run's are {input_size[0]}x{input_size[1]}", stacklevel=3)


#: what a run writes from its first epoch on: finding any of these, a new run would overwrite
#: a run (finished, or stopped after an epoch: --resume continues it)
_RUN_RESULTS = (state.STATE_NAME, "metrics.csv", "best.json", "best.safetensors", "last.json",
                "last.safetensors")


def _refuse_to_overwrite(run: Path) -> None:
    """A new run never overwrites another run's results or a file that is not a run's.

    Files a run writes before its first checkpoint (config.yaml, train_sha256.txt,
    val_split.json) may be those of a start that failed (diverged, killed during compile):
    the same command then starts again. Files a run never writes (a job's log) are left alone.
    """
    if run.exists() and not run.is_dir():
        raise DarklensError(f"{run}: is a file; --out must be a folder")
    found = [name for name in _RUN_RESULTS if (run / name).exists()]
    if found:
        raise DarklensError(f"{run}: holds a run ({', '.join(found)}); pass --resume to continue "
                            "it, or choose another --out")
    config = run / "config.yaml"
    if config.exists():
        try:
            record = yaml.safe_load(config.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            record = None
        if not (isinstance(record, dict) and "recipe" in record and "data_info" in record):
            raise DarklensError(f"{config}: not a darklens run's config (a dataset's?); "
                                "training would overwrite it: choose another --out")


def _limit_spent(config: TrainConfig, trained_s: float) -> bool:
    return config.time_limit_min > 0 and trained_s > 60 * config.time_limit_min


def _check_time_left(run: Path, config: TrainConfig, trained_s: float) -> None:
    """Refuse a resume whose time limit is already spent: it would train one epoch and stop.

    The limit is the one given now, else the one saved with the last finished epoch (a piece
    killed before finishing an epoch saved nothing, so its limit is not the saved one).
    """
    if _limit_spent(config, trained_s):
        raise DarklensError(
            f"{run}: its time limit, time_limit_min={config.time_limit_min:g}, is spent "
            f"({trained_s / 60:.1f} min trained); resume with a larger --set time_limit_min=M "
            "(the run's total minutes) or time_limit_min=0 to train to the end")


def _epochs_in_budget(first_epoch_s: float, budget_min: float, max_epochs: int) -> int:
    """How many epochs like the first fit in ``budget_min`` minutes (at least 1, at most all).

    The first epoch is the slowest (warm-up, cuDNN autotuning), so the estimate errs short.
    """
    return max(1, min(max_epochs, int(60 * budget_min // max(first_epoch_s, 1e-9))))


def _save_epoch(run: Path, save_checkpoint, eval_net, config: TrainConfig, model_kwargs: dict,
                preprocessing: dict, resolved: dict, row: dict, improved: bool,
                history: list[dict]) -> None:
    """last.* every epoch, best.* when val macro AUC improved, and the metrics table."""
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    common = dict(model_name=config.model, model_kwargs=model_kwargs,
                  preprocessing=preprocessing, config=resolved, metrics=metrics,
                  seed=config.seed, extra={"epoch": row["epoch"]})
    save_checkpoint(run / "last", eval_net, **common)
    if improved:
        save_checkpoint(run / "best", eval_net, **common)
    state.write_metrics_csv(run, history)


def _validation_pass(eval_net, val, config: TrainConfig, train_split, preset,
                     rank_batch: int, epoch: int, dist_info, dev: torch.device,
                     sim_overrides: dict):
    """The network to save (BN statistics re-estimated if asked) and its val probabilities.

    Both steps run in IEEE fp32 (no autocast, no TF32), the arithmetic of ``darklens evaluate``
    and ``predict``, so the logged numbers are the ones a user reproduces from the checkpoint.
    Validating under bf16 did not: the notebook's network amplifies bf16 rounding ~300x from its
    first layer to its logits, and a run that validated at 0.599 accuracy in bf16 scored 0.44
    in fp32 with the same weights (statistics estimated under bf16; session 6, H200).
    """
    from darklens.evaluation.inference import ieee_fp32

    with ieee_fp32(dev):
        if config.bn_recalib_batches > 0:
            eval_net = _recalibrated_copy(eval_net, config, train_split, preset, rank_batch,
                                          epoch, dist_info, dev, sim_overrides)
        probs = loop.predict_probs(eval_net, val.images, subtract=config.subtract, device=dev,
                                   amp="none", channels_last=config.channels_last,
                                   batch_size=config.eval_batch_size, tta=config.tta_val)
    return eval_net, probs


def _recalibrated_copy(eval_net, config: TrainConfig, train_split, preset, rank_batch: int,
                       epoch: int, dist_info, dev: torch.device, sim_overrides: dict):
    """A copy of ``eval_net`` with BN statistics re-estimated on un-augmented train batches.

    A copy, so the training model's own buffers (and so the run's trajectory) stay untouched.
    """
    import copy

    k = config.bn_recalib_batches
    seed = config.seed + 77_777  # batches of their own: not the epoch's training order
    if train_split is not None:
        n = min(k, tdata.steps_per_epoch(len(train_split), rank_batch, dist_info.world_size))
        batches = tdata.array_batches(train_split, batch_size=rank_batch, seed=seed, epoch=epoch,
                                      rank=dist_info.rank, world_size=dist_info.world_size)
        batches = (b for _, b in zip(range(n), batches))
    else:
        batches = tdata.sim_batches(preset, batch_size=rank_batch, steps=k, seed=seed,
                                    epoch=epoch, rank=dist_info.rank, device=dev,
                                    overrides=sim_overrides)
    return loop.recalibrate_bn(copy.deepcopy(eval_net), batches, subtract=config.subtract,
                               device=dev, amp="none", channels_last=config.channels_last)


def _summary(row: dict) -> str:
    return (f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f} val_loss "
            f"{row['val_loss']:.4f} acc {row['accuracy']:.4f} macro_f1 {row['macro_f1']:.4f} "
            f"auc_macro {row['auc_macro']:.4f} ({row['train_images_per_s']:.0f} img/s)")


@contextlib.contextmanager
def _rank_local(train_net: torch.nn.Module):
    """No collective inside: DDP neither all-reduces gradients nor broadcasts buffers.

    A rank whose compiled trial step raises skips the rest of that step; had the step held a
    collective, the other ranks would wait in it forever (tests/scripts/ddp_compile_fault.py).
    Gradients stay rank-local, which is what the compiled-vs-eager comparison wants anyway.
    """
    if not isinstance(train_net, torch.nn.parallel.DistributedDataParallel):
        yield
        return
    # A forward under no_sync() also clears require_forward_param_sync, which would skip the
    # buffer broadcast of the first real step on the ranks that ran the trial, and only there.
    saved = train_net.broadcast_buffers, train_net.require_forward_param_sync
    train_net.broadcast_buffers = False
    try:
        with train_net.no_sync():
            yield
    finally:
        train_net.broadcast_buffers, train_net.require_forward_param_sync = saved


def _try_compile(train_net: torch.nn.Module, dev: torch.device, config: TrainConfig,
                 rank_batch: int, input_size: list[int],
                 dist_info: distributed.DistInfo) -> tuple[torch.nn.Module, bool]:
    """torch.compile the training forward, checked on one dummy step; eager if that fails.

    The trial step runs forward and backward through the compiled and the eager module on the
    same batch, without an optimizer step (BN running statistics are restored afterwards, so
    it leaves the weights untouched). A compile error, a non-finite gradient or outputs that
    disagree with eager mean eager training: on an H200 (torch 2.11, bf16) the compiled
    densenet_cbam gave non-finite gradients at every step, which a run must not find out by
    diverging. Under DDP the ranks agree: one rank's failure makes every rank train eagerly.
    Returns the module to train and whether it is the compiled one (config.yaml records it).
    """
    compiled = torch.compile(train_net)
    buffers = {k: v.clone() for k, v in train_net.state_dict().items()}
    x = loop.model_layout(torch.rand(rank_batch, 1, *input_size, device=dev) - config.subtract,
                          config.channels_last)
    params = [p for p in train_net.parameters() if p.requires_grad]

    def forward_backward(module):
        for p in params:
            p.grad = None
        with loop.autocast(dev, config.amp):
            out = module(x)
        # (logits, signal map) with a signal head: back-propagate through both, and compare
        # each on its own scale (the map's values could hide a logit mismatch)
        outs = [o.float() for o in (out if isinstance(out, tuple) else (out,))]
        sum(o.sum() for o in outs).backward()
        grads = [p.grad.detach().clone() if p.grad is not None else None for p in params]
        train_net.load_state_dict(buffers)  # undo the BN statistics of this batch
        return [o.detach() for o in outs], grads

    problem = None
    with _rank_local(train_net):
        try:
            train_net.train()
            got, got_grads = forward_backward(compiled)
        except Exception as e:  # compile problems must not cost the run: fall back to eager
            problem = f"{type(e).__name__}: {e}"
        # Every rank gets here, whichever step failed, so this collective always pairs up.
        if not distributed.any_rank(problem is not None, dist_info, dev):
            try:
                want, _ = forward_backward(train_net)
                if not all(torch.isfinite(g).all() for g in got):
                    problem = "non-finite outputs"
                elif any(g is not None and not torch.isfinite(g).all() for g in got_grads):
                    problem = "non-finite gradients"
                else:
                    names = ("outputs", "signal maps")  # logits; the signal head's map
                    for name, g, w in zip(names[:len(got)], got, want, strict=True):
                        if not torch.allclose(g, w, rtol=0.1,
                                              atol=0.1 * float(w.abs().max()) + 1e-3):
                            problem = (f"{name} differ from eager by "
                                       f"{float((g - w).abs().max()):.3g}")
                            break
            except Exception as e:
                problem = f"{type(e).__name__}: {e}"
        for p in params:
            p.grad = None
        train_net.load_state_dict(buffers)
    if distributed.any_rank(problem is not None, dist_info, dev):
        problem = problem or "failed on another rank"
        warnings.warn(f"torch.compile rejected ({problem}); training eagerly", stacklevel=2)
        return train_net, False
    return compiled, True
