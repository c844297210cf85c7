"""FuseInit on CIFAR-10 in a CPU-sized budget: a 4-conv teacher fused into a 2-conv student.

A few thousand training images (``--train-per-class``), a class-balanced test subset
(``--test-per-class``) of the official test set, no augmentation, a few epochs. For each seed: train
the teacher, then initialize the student four ways (PyTorch default, He normal, Sylvester, FuseInit
from the teacher) and train each for a few epochs with the same loop (Adam).

* teacher: conv3x3(32)-conv3x3(32)-pool-conv3x3(64)-conv3x3(64)-pool-avgpool-fc(128)-head
* student: conv5x5(32)-pool-conv5x5(64)-pool-avgpool-fc(128)-head; each 5x5 conv replaces a pair of
  3x3 teacher convs (conv-conv, fitted to the second conv's pre-activation output at 16 random
  positions per image); fc and head are fitted to the teacher's fc and head outputs.

Prepare the data once (never commit it)::

    python /work/shared/data/prepare_cifar10.py /tmp/cifar
    python examples/fuse_cifar10.py --data-dir /tmp/cifar
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import torch
from fuse_common import append_csv, run_students, summarize, train
from torch import nn

from lightning_sylv.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, read_cifar10
from lightning_sylv.data.datasets import few_shot_indices

HERE = Path(__file__).resolve().parent
MAPPING = {"conv1": "conv2", "conv2": "conv4", "fc": "fc", "head": "head"}


def teacher_net() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 32, 3, padding=1), relu1=nn.ReLU(),
        conv2=nn.Conv2d(32, 32, 3, padding=1), relu2=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv3=nn.Conv2d(32, 64, 3, padding=1), relu3=nn.ReLU(),
        conv4=nn.Conv2d(64, 64, 3, padding=1), relu4=nn.ReLU(), pool2=nn.MaxPool2d(2),
        avg=nn.AvgPool2d(2), flat=nn.Flatten(),
        fc=nn.Linear(64 * 4 * 4, 128), relu5=nn.ReLU(), head=nn.Linear(128, 10),
    ))


def student_net() -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 32, 5, padding=2), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(32, 64, 5, padding=2), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2),
        avg=nn.AvgPool2d(2), flat=nn.Flatten(),
        fc=nn.Linear(64 * 4 * 4, 128), relu3=nn.ReLU(), head=nn.Linear(128, 10),
    ))


def load(data_dir: Path, train: bool, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_cifar10(data_dir, train=train)
    idx = few_shot_indices(labels, per_class, seed=0, num_classes=10)
    x = images[idx].float() / 255.0
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(), labels[idx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/cifar"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3], help="report after these student epochs")
    parser.add_argument("--per-class", type=int, default=200, help="initialization subset, images per class")
    parser.add_argument("--patches", type=int, default=16, help="patch positions per image for convolutions")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--csv", type=Path, default=HERE / "results" / "fuseinit.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)

    x_tr, y_tr = load(args.data_dir, True, args.train_per_class)
    x_te, y_te = load(args.data_dir, False, args.test_per_class)
    print(f"cifar10: {len(y_tr)} train / {len(y_te)} test images; subset {args.per_class}/class", flush=True)
    rows = []
    for seed in args.seeds:
        torch.manual_seed(1000 + seed)
        teacher = teacher_net()
        train(teacher, x_tr, y_tr, args.teacher_epochs, seed=1000 + seed, lr=args.lr, batch_size=128)
        seed_rows = run_students(
            script="fuse_cifar10.py", dataset=f"cifar10-{len(y_tr)}", arch="cnn", seed=seed, teacher=teacher.eval(),
            make_student=student_net, mapping=MAPPING, data=(x_tr, y_tr, x_te, y_te), per_class=args.per_class,
            epochs=args.epochs, patches_per_image=args.patches, lr=args.lr, batch_size=128,
            teacher_epochs=args.teacher_epochs,
        )
        append_csv(args.csv, seed_rows)  # as they come: a long run leaves its finished seeds behind
        rows += seed_rows
    print(summarize(rows))
    print(f"\nappended {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
