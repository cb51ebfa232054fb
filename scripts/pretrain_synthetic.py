"""Pretrain a torchvision AlexNet (or a narrow VGG-16 or ResNet-50, --arch; any of them
narrower with --width) on the synthetic single-object source task (PyTorch, CPU).

The ImageNet role in the offline transfer demo: the real torchvision architecture (only the
input is smaller: 64 px by default, the smoke config's patch size, instead of 224), trained
from torchvision's own initialisation on voc_jax.data.synthetic_source, saved as a
torchvision-layout state dict that convert/alexnet_to_flax.py --pth converts like real weights.
Inputs are normalised exactly like torchvision's ImageNet models (RGB / 255, ImageNet mean and
std), which is what the converter records for a .pth by default.

    python scripts/pretrain_synthetic.py --out runs/transfer_demo/source_alexnet.pth

Writes OUT (the state dict, atomically) and OUT with .json (accuracy, settings, wall time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from voc_jax import models
from voc_jax.data.synthetic_source import SourceConfig, make_split

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/transfer_demo/source_alexnet.pth"))
    p.add_argument("--arch", choices=models.ARCHITECTURES, default="alexnet")
    p.add_argument(
        "--width",
        type=float,
        default=None,
        help="channel multiplier (default: the architecture's quick width: 1 for AlexNet, the "
        "real one; 0.25 for VGG-16 and ResNet-50, minutes on a CPU)",
    )
    p.add_argument("--classes", type=int, default=100, help="source classes (max 300)")
    p.add_argument("--train-per-class", type=int, default=80, help="training images per class")
    p.add_argument("--val-per-class", type=int, default=10, help="held-out images per class")
    p.add_argument("--size", type=int, default=64, help="input side in pixels")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--optimizer",
        choices=("adam", "sgd"),
        default="adam",
        help="adam (default): SGD from torchvision's init sits on a plateau for epochs here",
    )
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--warmup-epochs", type=float, default=0.3, help="linear warm-up, then cosine")
    p.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    return p.parse_args(argv)


def source_width(args: argparse.Namespace) -> float:
    if args.width is not None:
        return args.width
    return models.backbone(args.arch).quick_width


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def pretrain(args: argparse.Namespace) -> dict:
    """Train, save OUT atomically, return the summary also written to OUT.json."""
    if args.out.exists() and not args.force:
        raise SystemExit(f"{args.out} exists; pass --force to replace it")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    source = SourceConfig(num_classes=args.classes, size=args.size)
    bar = lambda desc: lambda r: tqdm(r, desc=desc, unit="img", leave=False)  # noqa: E731
    train_x, train_y = make_split(
        "train", args.classes * args.train_per_class, source, args.seed, bar("source train")
    )
    val_x, val_y = make_split(
        "val", args.classes * args.val_per_class, source, args.seed, bar("source val")
    )
    x, y = to_tensor(train_x), torch.from_numpy(train_y)
    vx, vy = to_tensor(val_x), torch.from_numpy(val_y)
    generated = time.perf_counter() - start

    from voc_jax.convert import torch_models

    model = torch_models.classifier(args.arch, args.classes, source_width(args))
    if args.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
    steps_per_epoch = len(x) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = max(1, int(args.warmup_epochs * steps_per_epoch))

    def rate(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup)))

    gen = torch.Generator().manual_seed(args.seed)
    history = []
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        losses, hits = [], 0
        bar_ = tqdm(range(steps_per_epoch), desc=f"pretrain epoch {epoch + 1}/{args.epochs}")
        for b in bar_:
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            for group in opt.param_groups:
                group["lr"] = rate(step)
            logits = model(xb)
            loss = torch.nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
            hits += int((logits.argmax(1) == yb).sum())
            bar_.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        val_acc = accuracy(model, vx, vy)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "train_accuracy": hits / (steps_per_epoch * args.batch_size),
                "val_accuracy": val_acc,
            }
        )
        print(
            f"epoch {epoch + 1}: loss {history[-1]['train_loss']:.3f}  "
            f"train acc {history[-1]['train_accuracy']:.3f}  val acc {val_acc:.3f}",
            flush=True,
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, args.out)
    summary = {
        "source": dataclasses.asdict(source),
        "arch": args.arch,
        "width": source_width(args),
        "train_images": len(x),
        "val_images": len(vx),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "seed": args.seed,
        "val_accuracy": history[-1]["val_accuracy"],
        "chance_accuracy": 1.0 / args.classes,
        "history": history,
        "generate_seconds": generated,
        "wall_seconds": time.perf_counter() - start,
    }
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"source-task accuracy {summary['val_accuracy']:.3f} (chance {1 / args.classes:.3f}); "
        f"saved {args.out} in {summary['wall_seconds']:.0f} s"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    pretrain(parse_args(argv))
    return 0


if __name__ == "__main__":
    from voc_jax.cli import run_guarded

    sys.exit(run_guarded(main))
