"""A supervised training loop over a shuffled DataLoader with worker processes, snapshot mid-epoch.

The dataset augments each sample with torch random noise inside the worker processes. The
loader is wrapped in ``replaykit.ResumableLoader``, so a snapshot taken halfway
through the second epoch holds the epoch's start state and the batches consumed; a fresh
process restores it, the loader yields exactly the remaining batches of that epoch (without
loading the consumed ones), and the next updates are verified bit-exactly.

    python examples/supervised_dataloader.py --out /tmp/sup.h5      # record (snapshot "mid")
    python examples/supervised_dataloader.py --replay /tmp/sup.h5   # restore + verify, exit 0/1
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import replaykit
from replaykit import (
    Counters,
    LayerTracer,
    ResumableLoader,
    TrainingRecorder,
    params_digest,
    restore_training,
)


class NoisyRegression(Dataset):
    """y = sin(x . w) with fixed inputs; each read adds fresh noise (worker-side randomness)."""

    def __init__(self, n: int, dim: int = 8, seed: int = 0) -> None:
        g = np.random.default_rng(seed)
        self.x = torch.as_tensor(g.standard_normal((n, dim), dtype=np.float32))
        self.y = torch.sin(self.x @ torch.as_tensor(g.standard_normal(dim, dtype=np.float32)))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.05 * torch.randn(self.x.shape[1]), self.y[i]


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = nn.Sequential(
            nn.Linear(8, args.hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(args.hidden, 1)
        )
        self.opt = torch.optim.SGD(self.model.parameters(), lr=args.lr, momentum=0.9)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=1, gamma=0.7)
        self.loader = ResumableLoader(
            DataLoader(
                NoisyRegression(args.samples, seed=args.seed),
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=args.workers,
                generator=torch.Generator().manual_seed(args.seed),
            )
        )
        self.c = Counters(update=0)

    def tracked(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizer": self.opt,
            "scheduler": self.sched,
            "loader": self.loader,
            "counters": self.c,
        }


def train(
    rk: Any,
    t: Trainer,
    *,
    until_update: int,
    snapshot_at: tuple[int, int] | None = None,
) -> None:
    """The one loop for record (``rk`` = TrainingRecorder) and replay (``rk`` = TrainingReplay).

    ``for x, y in t.loader`` continues a restored epoch at its next batch.
    """
    a, c = t.args, t.c
    while t.loader.epoch < a.epochs:
        for x, y in t.loader:
            with LayerTracer({"model": t.model}, enabled=c.update == a.localize_update) as tr:
                loss = nn.functional.mse_loss(t.model(x).squeeze(1), y)
                t.opt.zero_grad()
                loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(t.model.parameters(), 1e9)
            t.opt.step()
            c.update += 1
            rk.log_update(
                loss=loss.detach(),
                grad_norm=grad_norm,
                epoch=t.loader.epoch,
                lr=t.sched.get_last_lr()[0],
                params=params_digest(t.model),
                **tr.probes(),
            )
            if (t.loader.epoch, t.loader.position) == snapshot_at:
                rk.snapshot("mid")  # in the middle of an epoch
            if c.update >= until_update:
                return
        t.sched.step()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="supervised.h5", help="recording to write")
    p.add_argument("--replay", metavar="FILE", help="restore FILE's snapshot and verify")
    p.add_argument(
        "--verify-updates",
        type=int,
        default=14,
        help="updates to verify (the default runs into the next epoch)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--snapshot-at",
        type=int,
        nargs=2,
        default=[1, 5],
        metavar=("EPOCH", "BATCH"),
        help="snapshot after this many batches of EPOCH",
    )
    p.add_argument("--localize-update", type=int, default=-1)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    return p.parse_args(argv)


HYPER = (
    "seed",
    "epochs",
    "snapshot_at",
    "localize_update",
    "samples",
    "batch_size",
    "workers",
    "hidden",
    "lr",
)


def record(args: argparse.Namespace) -> str:
    torch.manual_seed(args.seed)
    t = Trainer(args)
    with TrainingRecorder(
        args.out, track=t.tracked(), metadata={k: getattr(args, k) for k in HYPER}
    ) as rec:
        train(rec, t, until_update=args.epochs * len(t.loader), snapshot_at=tuple(args.snapshot_at))
    return str(rec.path)


def replay(path: str, verify_updates: int) -> Any:
    with replaykit.Recording(path) as rec:
        args = argparse.Namespace(**rec.meta["user"])
    t = Trainer(args)
    with restore_training(path, "mid", track=t.tracked()) as rep:
        train(rep, t, until_update=rep.update_count + verify_updates)
    return rep


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    if args.replay:
        try:
            rep = replay(args.replay, args.verify_updates)
        except replaykit.DivergenceError as exc:
            print(exc.report.format())
            return 1
        print(f"verified {rep.verified_updates} updates after snapshot 'mid': bit-identical")
        return 0
    print(f"recorded {record(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
