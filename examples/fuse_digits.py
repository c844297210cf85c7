"""FuseInit on scikit-learn's digits: deeper MLP and CNN teachers fused into shallower students.

For each seed: train the teacher, then initialize the student four ways (PyTorch default, He normal,
Sylvester, FuseInit from the teacher) and train each for a few epochs with the same loop (Adam).
Test accuracy right after initialization (epoch 0) and after the given epochs is printed as mean ±
std over seeds and appended to a CSV.

* MLP: teacher 64-128-128-128-64-10, student 64-128-64-10; each student hidden layer replaces a pair
  of teacher layers (dense-dense) and is fitted to the pair's pre-activation output; the head to the
  teacher's logits.
* CNN (no BatchNorm): teacher conv3x3(16)-conv3x3(32)-pool-conv3x3(64)-fc(128)-head, student
  conv5x5(32)-pool-fc(128)-head: conv-conv (two 3x3 -> one 5x5) and conv-dense (the teacher's third
  conv + fc -> the student's fc).

    python examples/fuse_digits.py                       # 3 seeds, both nets (about 2 minutes on 1 CPU thread)
    python examples/fuse_digits.py --seeds 0 --arch mlp  # quick look
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import torch
from fuse_common import append_csv, run_students, summarize, train
from torch import nn

from lightning_sylv.data import DigitsDataModule
from lightning_sylv.models import MLP

HERE = Path(__file__).resolve().parent
MLP_MAPPING = {"features.1": "features.3", "features.3": "features.7", "head": "head"}
CNN_MAPPING = {"conv1": "conv2", "fc": "fc", "head": "head"}


def cnn_teacher() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 16, 3, padding=1), relu1=nn.ReLU(),
        conv2=nn.Conv2d(16, 32, 3, padding=1), relu2=nn.ReLU(), pool=nn.MaxPool2d(2),
        conv3=nn.Conv2d(32, 64, 3, padding=1), relu3=nn.ReLU(), flat=nn.Flatten(),
        fc=nn.Linear(64 * 4 * 4, 128), relu4=nn.ReLU(), head=nn.Linear(128, 10),
    ))


def cnn_student() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 32, 5, padding=2), relu1=nn.ReLU(), pool=nn.MaxPool2d(2), flat=nn.Flatten(),
        fc=nn.Linear(32 * 4 * 4, 128), relu2=nn.ReLU(), head=nn.Linear(128, 10),
    ))


NETS = {
    "mlp": (lambda: MLP(64, 10, hidden=[128, 128, 128, 64]), lambda: MLP(64, 10, hidden=[128, 64]), MLP_MAPPING),
    "cnn": (cnn_teacher, cnn_student, CNN_MAPPING),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arch", choices=list(NETS), nargs="+", default=list(NETS))
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 10], help="report after these student epochs")
    parser.add_argument("--per-class", type=int, default=100, help="initialization subset, images per class")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--csv", type=Path, default=HERE / "results" / "fuseinit.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)

    dm = DigitsDataModule(seed=0)  # the split is fixed; seeds vary inits, subsets and shuffles
    dm.setup()
    data = (dm.train_dataset.inputs, dm.train_dataset.targets, dm.test_dataset.inputs, dm.test_dataset.targets)
    print(f"digits: {len(data[1])} train / {len(data[3])} test images; subset {args.per_class}/class")
    rows = []
    for arch in args.arch:
        make_teacher, make_student, mapping = NETS[arch]
        for seed in args.seeds:
            torch.manual_seed(1000 + seed)
            teacher = make_teacher()
            train(teacher, data[0], data[1], args.teacher_epochs, seed=1000 + seed, lr=args.lr)
            seed_rows = run_students(
                script="fuse_digits.py", dataset="digits", arch=arch, seed=seed, teacher=teacher.eval(),
                make_student=make_student, mapping=mapping, data=data, per_class=args.per_class,
                epochs=args.epochs, patches_per_image=None, lr=args.lr, batch_size=64,
                teacher_epochs=args.teacher_epochs,
            )
            append_csv(args.csv, seed_rows)
            rows += seed_rows
    print(summarize(rows))
    print(f"\nappended {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
