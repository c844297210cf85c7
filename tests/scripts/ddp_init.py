"""Run SylvesterInit under a real Trainer and save every rank's weights right after initialization.

Usage: python ddp_init.py OUT_DIR DEVICES [STRATEGY [bn] [head] [wide] [float64]]

``wide``: 64 input features for 40 samples, so the first layer has fewer rows than inputs and
solves in the span of its rows, gathered across processes.
Lightning's subprocess launcher re-runs this script for the other ranks (strategy="ddp", gloo on CPU).
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sylv import SylvesterInit


class Data(LightningDataModule):
    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        y = torch.arange(4).repeat(30)
        x = torch.randn(4, dim, generator=g)[y] + 0.3 * torch.randn(120, dim, generator=g)
        self.ds = TensorDataset(x, y)

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=16)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=32)


class Net(LightningModule):
    def __init__(self, bn: bool, dim: int = 12) -> None:
        super().__init__()
        layers = [nn.Linear(dim, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Linear(16, 4)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class SaveState(Callback):
    def __init__(self, out: Path, tag: str = "") -> None:
        self.out, self.tag = out, tag

    def on_fit_start(self, trainer, pl_module):  # callbacks run in list order
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, self.out / f"{self.tag}world{trainer.world_size}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out, devices = Path(sys.argv[1]), int(sys.argv[2])
    strategy = sys.argv[3] if len(sys.argv) > 3 else ("ddp" if devices > 1 else "auto")
    flags = set(sys.argv[4:])
    bn, head_only, dim = "bn" in flags, "head" in flags, 64 if "wide" in flags else 12
    # float64: every product in float64, so that a process's half of the sums adds up to the single
    # process's sums to rounding (the default's float32 blocks are cut where each process's rows end).
    precision = "float64" if "float64" in flags else "mixed"
    seed_everything(0)
    model = Net(bn, dim)
    if head_only:  # a "pretrained" body: BatchNorm statistics that are not 0 and 1
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            SaveState(out, "before_"),
            init := SylvesterInit(
                samples_per_class=10, verbose=False, layers="head" if head_only else "all", precision=precision
            ),
            SaveState(out),
        ],
    )
    trainer.fit(model, datamodule=Data(dim))
    solvers = {r.name: r.solver for r in init.report.layers}
    torch.save(solvers, out / f"solvers_world{trainer.world_size}_rank{trainer.global_rank}.pt")
