"""The seed notebook's training pipeline, reproduced faithfully as the speed baseline.

What it keeps from the notebook: one ``np.load`` per image inside a ``Dataset``, a DataLoader with
4 workers (pin_memory, shuffle, drop_last), batch 64, fp32, ``cudnn.deterministic = True`` (its
``set_seed``), the seed_exact DenseNet-CBAM, AdamW 3e-4 / wd 1e-5, a per-step cosine schedule with
warm-up, cross-entropy during warm-up then label smoothing 0.1, ``image - 0.5``, and the per-batch
sklearn F1/accuracy (a GPU->CPU sync per step) in the training loop.

What it fixes, because it would make the comparison meaningless: validation reads the ``val``
folder (the notebook scored training images) and its accuracy is computed over the whole split,
not averaged per batch. albumentations' ``Resize(150, 150)`` on 150x150 images is the identity and
is left out.

    python benchmarks/notebook_pipeline.py DATA --epochs 4 --warmup-epochs 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import DataLoader, Dataset

CLASS_DIRS = ("no", "sphere", "vort")


def set_seed(seed: int) -> None:
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True


def make_data(root: Path, split: str) -> list[tuple[str, int]]:
    return [(str(p), label) for label, name in enumerate(CLASS_DIRS)
            for p in sorted((root / split / name).glob("*.npy"))]


class Len(Dataset):
    """The notebook's Dataset: one np.load per item, ``image - 0.5``."""

    def __init__(self, items: list[tuple[str, int]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int):
        path, label = self.items[idx]
        image = np.load(path) - 0.5  # (1, H, W); the notebook squeezes then ToTensorV2 re-adds
        return torch.tensor(image, dtype=torch.float32), torch.tensor(label).long()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    from darklens.models import create_model
    from darklens.training.loop import cosine_with_warmup  # the notebook's transformers schedule

    set_seed(42)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = Path(a.data)
    train_items, val_items = make_data(root, "train"), make_data(root, "val")
    train_loader = DataLoader(Len(train_items), shuffle=True, num_workers=a.workers,
                              pin_memory=True, drop_last=True, batch_size=a.batch)
    val_loader = DataLoader(Len(val_items), shuffle=False, num_workers=a.workers,
                            pin_memory=True, drop_last=False, batch_size=a.batch)
    # the notebook's layer order too (transitions: conv, then pool)
    model = create_model("densenet_cbam", seed_exact=True, pool_first=False).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-5)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(steps * a.warmup_epochs, steps * a.epochs))
    history = []
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        smoothing = 0.0 if epoch < a.warmup_epochs else 0.1
        model.train()
        t_epoch = time.perf_counter()
        n_images = 0
        for image, labels in train_loader:
            image, labels = image.to(device), labels.to(device)
            output = model(image)
            loss = F.cross_entropy(output, labels, label_smoothing=smoothing)
            preds = output.softmax(1).argmax(1).cpu().numpy()
            targets = labels.cpu().numpy()
            f1_score(targets, preds, average="macro")  # the notebook's per-step metrics
            accuracy_score(targets, preds)
            loss.item()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            n_images += labels.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t_epoch
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for image, labels in val_loader:
                pred = model(image.to(device)).argmax(1).cpu()
                correct += int((pred == labels).sum())
                total += labels.shape[0]
        row = {"epoch": epoch + 1, "val_accuracy": correct / total,
               "train_images_per_s": n_images / train_s, "epoch_train_s": train_s,
               "elapsed_s": time.perf_counter() - t0}
        history.append(row)
        print(json.dumps(row), flush=True)
    result = {"pipeline": "notebook", "epochs": a.epochs, "warmup_epochs": a.warmup_epochs,
              "batch": a.batch, "workers": a.workers, "n_train": len(train_items),
              "n_val": len(val_items), "history": history,
              "final_val_accuracy": history[-1]["val_accuracy"],
              # the first epoch pays worker start-up; steady state is the median of the rest
              "train_images_per_s": float(np.median([h["train_images_per_s"]
                                                     for h in history[1:] or history])),
              "wall_s": history[-1]["elapsed_s"],
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
