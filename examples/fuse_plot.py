"""Plot the FuseInit experiments: test accuracy vs student epoch per arm (mean ± std over seeds).

Reads the CSV written by ``fuse_digits.py`` / ``fuse_cifar10.py`` and draws one panel per
(dataset, arch, subset size); the teacher's accuracy is a dashed line.

    python examples/fuse_plot.py            # -> examples/figures/fuseinit.png
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
ARMS = ("default", "he", "sylvester", "fuse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=HERE / "results" / "fuseinit.csv")
    parser.add_argument("--out", type=Path, default=HERE / "figures" / "fuseinit.png")
    args = parser.parse_args()
    acc: dict[tuple[str, str, str], dict[str, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    with args.csv.open() as f:
        for r in csv.DictReader(f):
            acc[(r["dataset"], r["arch"], r["samples"])][r["arm"]][int(r["epoch"])].append(100 * float(r["test_acc"]))
    panels = sorted(acc)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        arms = acc[key]
        for arm in ARMS:
            if arm not in arms:
                continue
            epochs = sorted(arms[arm])
            mean = [statistics.mean(arms[arm][e]) for e in epochs]
            std = [statistics.pstdev(arms[arm][e]) for e in epochs]
            ax.errorbar(epochs, mean, yerr=std, marker="o", capsize=3, label=arm)
        teacher = [v for vs in arms.get("teacher", {}).values() for v in vs]
        if teacher:
            ax.axhline(statistics.mean(teacher), ls="--", c="k", lw=1, label="teacher")
        ax.set_title(f"{key[0]} {key[1]}, init subset {key[2]}", fontsize=9)
        ax.set_xlabel("student training epochs")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(panels)} panels)")


if __name__ == "__main__":
    main()
