"""SylvesterInit on a small BatchNorm CNN under a real Trainer: DDP, or FSDP2 through ModelParallelStrategy.

Usage: python sharded_init.py OUT_DIR STRATEGY [head] [meta] [stream] [attn] [resume CKPT_DIR] [save CKPT_DIR]

STRATEGY: ``ddp`` or ``fsdp2`` (``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)``
with ``fully_shard`` on every conv, the head and the root in ``configure_model``), always 2 CPU processes.
Writes ``<tag>_rank<r>.pt``: the full weights right after the init (``DTensor.full_tensor()`` under
FSDP2), the per-step training losses, how often ``sylvester/initial_accuracy`` reached the logger and
the init report's solver per layer.

``head``: the body is "pretrained" first (a few seeded SGD steps in plain PyTorch, identical on every
process), then only the head is initialized. ``meta``: the model is created under
``trainer.init_module(empty_init=True)`` (on the meta device; the strategy materializes it).
``attn``: a token model with ``nn.MultiheadAttention`` (packed in-projection, out-projection) instead
of the CNN. ``stream``: the subset is streamed in mini-batches of 8 (``batch_size=8``).
``save DIR`` / ``resume DIR``: keep a checkpoint after training / resume from the last one in DIR.
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_sylv import SylvesterInit


class Data(LightningDataModule):
    def __init__(self, tokens: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        y = torch.arange(4).repeat(24)
        shape = (6, 8) if tokens else (3, 8, 8)  # 6 tokens of 8 features, or 3 x 8 x 8 images
        x = torch.randn(4, *shape, generator=g)[y] + 0.5 * torch.randn(96, *shape, generator=g)
        self.ds = TensorDataset(x, y)

    def train_dataloader(self):
        return DataLoader(self.ds, batch_size=24)

    def val_dataloader(self):
        return DataLoader(self.ds, batch_size=48)


def body() -> nn.Sequential:
    # 7 channels: the second conv's weight rows split 4/3 over two processes (uneven shards).
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 7, 3, padding=1, bias=False), nn.BatchNorm2d(7), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(),
    )  # fmt: skip


class Attention(nn.Module):
    """Tokens -> embedding -> self-attention (packed in_proj, out_proj) -> mean over tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        h = self.embed(x)
        return self.attn(h, h, h, need_weights=False)[0].mean(1)


class Net(LightningModule):
    def __init__(self, attention: bool = False) -> None:
        super().__init__()
        self.body = Attention() if attention else body()
        # CNN: 112 inputs for 40 samples, solved in the span of its rows.
        self.head = nn.Linear(16 if attention else 7 * 4 * 4, 4)
        self.losses: list[float] = []

    def configure_model(self) -> None:
        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for m in [*self.body.modules(), self.head]:
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)) and not isinstance(
                m, nn.modules.linear.NonDynamicallyQuantizableLinear
            ):
                fully_shard(m, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(float(loss))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def pretrain(model: Net) -> None:
    """A few seeded full-batch SGD steps (identical on every process): a body that is not random."""
    x, y = Data().ds.tensors
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


class SaveState(Callback):
    """Saves the full weights at on_train_start (after SylvesterInit, which runs there under
    ModelParallelStrategy or at on_fit_start otherwise), or at on_fit_start (``before``: before it)."""

    def __init__(self, out: Path, tag: str, before: bool = False) -> None:
        self.out, self.tag, self.before = out, tag, before

    def on_fit_start(self, trainer, pl_module):
        if self.before:
            self._save(trainer, pl_module)

    def on_train_start(self, trainer, pl_module):
        if not self.before:
            self._save(trainer, pl_module)

    def _save(self, trainer, pl_module):
        state = {k: full(v) for k, v in pl_module.state_dict().items()}
        torch.save(state, self.out / f"{self.tag}_rank{trainer.global_rank}.pt")


class CountingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    @property
    def name(self):
        return "counting"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        for k in metrics:
            self.calls[k] = self.calls.get(k, 0) + 1


if __name__ == "__main__":
    out, kind = Path(sys.argv[1]), sys.argv[2]
    flags = sys.argv[3:]
    head_only, meta = "head" in flags, "meta" in flags
    stream, attention = "stream" in flags, "attn" in flags
    resume = Path(flags[flags.index("resume") + 1]) if "resume" in flags else None
    save = Path(flags[flags.index("save") + 1]) if "save" in flags else None
    named = [f for f in ("head", "meta", "stream", "attn") if f in flags]
    tag = "_".join([kind, *named, *(["resumed"] if resume else [])])
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if kind == "fsdp2" else "ddp"
    seed_everything(0)
    logger = CountingLogger()
    init = SylvesterInit(
        samples_per_class=10, verbose=False, layers="head" if head_only else "all", batch_size=8 if stream else None
    )
    callbacks = [SaveState(out, f"before_{tag}", before=True), init, SaveState(out, tag)]
    if save is not None:
        callbacks.append(ModelCheckpoint(dirpath=save, save_last=True))
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=8 if resume is None else 12,
        logger=logger,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=save is not None,
        callbacks=callbacks,
    )
    with trainer.init_module(empty_init=meta):
        model = Net(attention)
    if head_only:
        pretrain(model)
    ckpt = None if resume is None else str(resume / "last.ckpt")
    trainer.fit(model, datamodule=Data(tokens=attention), ckpt_path=ckpt)
    torch.save(
        {
            "losses": model.losses,
            "initial_accuracy_logged": logger.calls.get("sylvester/initial_accuracy", 0),
            "init_time_logged": logger.calls.get("sylvester/init_time_s", 0),
            "solvers": {} if init.report is None else {r.name: r.solver for r in init.report.layers},
            "final": {k: full(v) for k, v in model.state_dict().items()},
        },
        out / f"{tag}_run_rank{trainer.global_rank}.pt",
    )
    if torch.distributed.is_initialized():  # a clean exit: gloo's threads are joined before the interpreter ends
        torch.distributed.barrier()  # and no process tears its pairs down while the other still uses them
        torch.distributed.destroy_process_group()
