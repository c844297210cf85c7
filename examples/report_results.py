"""Build the CIFAR-10 tables (markdown) and figures (PNG) from ``examples/results/runs.csv``.

    python examples/reproduce.py report
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RANDOM_INITS = ("he_uniform", "he_normal", "xavier_uniform", "xavier_normal")
INITS = ("sylvester", "lsuv", *RANDOM_INITS)  # lsuv: the LSUV baseline (issue 18), a row only where it ran
PAPER_T1 = {  # Table 1, CIFAR-10 column of the paper: final (initial) accuracy in %
    "he_uniform": {10: (27.91, 9.96), 50: (40.84, 9.96), 100: (51.98, 9.96), 500: (75.20, 9.96)},
    "he_normal": {10: (26.97, 10.0), 50: (43.70, 10.0), 100: (51.56, 10.0), 500: (77.31, 10.0)},
    "xavier_uniform": {10: (25.51, 10.0), 50: (40.03, 10.0), 100: (49.19, 10.0), 500: (75.58, 10.0)},
    "xavier_normal": {10: (26.37, 8.45), 50: (39.53, 8.45), 100: (48.67, 8.45), 500: (75.72, 8.45)},
    "sylvester": {10: (26.84, 7.35), 50: (43.86, 10.03), 100: (53.86, 16.15), 500: (77.44, 29.61)},
}
PAPER_T2 = {10: (7.28, 17.96), 100: (26.0, 24.5), 300: (38.85, 25.14)}  # time s, initial accuracy %


def _ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "-"
    m = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{m:.{digits}f} (n=1)"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f} (n={len(values)})"


def _f(row: dict[str, str], key: str) -> float | None:
    return float(row[key]) if row.get(key) not in ("", None) else None


def _settings(rows: list[dict[str, str]], fixed: str) -> str:
    """One sentence with the settings shared by ``rows`` (shots, epochs and the fixed hyper-parameter)."""
    def one(key: str) -> str:
        return ", ".join(sorted({r[key] for r in rows if r.get(key)})) or "-"

    fixed_name = {"lam": "λ", "latent": "latent"}[fixed]
    return (f"Shots per class: {one('shots')}; epochs: {one('epochs')}; "
            f"Sylvester subset: {one('samples_per_class')} samples/class (capped by the shots), "
            f"{one('patches_per_image')} patches/image, {fixed_name} {one(fixed)}.")


def _lsuv_vs_sylvester(sub: list[dict[str, str]], columns: list[tuple[int, int]]) -> list[str]:
    """Sylvester (`pca`, the Table 1 code) minus LSUV, per Table 1 column where both ran (issue 18's targets)."""
    out = []
    for s, e in columns:
        pick = {init: {r["seed"]: r for r in sub
                       if r["initializer"] == init and int(r["shots"]) == s and int(r["epochs"]) == e
                       and (init != "sylvester" or r["latent"] == "pca")}
                for init in ("sylvester", "lsuv")}
        seeds = sorted(set(pick["sylvester"]) & set(pick["lsuv"]), key=int)
        if not seeds:
            continue
        d_fin = [float(pick["sylvester"][k]["final_acc"]) - float(pick["lsuv"][k]["final_acc"]) for k in seeds]
        d_ini = [float(pick["sylvester"][k]["initial_acc"]) - float(pick["lsuv"][k]["initial_acc"]) for k in seeds]
        wins = sum(d > 0 for d in d_fin)
        t_l = [float(pick["lsuv"][k]["init_time_s"]) for k in seeds if pick["lsuv"][k].get("init_time_s")]
        out.append(f"| {s} shots, {e} ep | {', '.join(seeds)} | {_ms(d_fin)} | {_ms(d_ini)} | {wins} of {len(seeds)} | "
                   f"{_ms(t_l, 1.0, 2)} |")
    if not out:
        return []
    return ["Sylvester (pca) minus LSUV, paired by seed (same shots, subset and schedule), in points of test accuracy; "
            "positive: Sylvester ahead. LSUV: the `lsuv` package (orthonormal init, then every Conv/Linear rescaled "
            "to unit output std on the subset), `--initializers lsuv`.", "",
            "| column | seeds | final acc. difference | initial acc. difference | seeds Sylvester's final is higher | "
            "LSUV init time (s) |", "| --- | --- | --- | --- | --- | --- |", *out, ""]


def build_report(csv_path: Path, out_dir: Path) -> Path:
    rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
    figs = out_dir.parent / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    lines = ["# CIFAR-10 results (ResNet-20)", "",
             f"Built from `{csv_path.name}` ({len(rows)} runs) by `python examples/reproduce.py report`.", ""]
    machines = sorted({r["machine"] for r in rows if r.get("machine")})
    dates = sorted({r["date"] for r in rows if r.get("date")})
    lines += [f"Machines: {', '.join(machines) or '-'}; dates: {', '.join(dates) or '-'}; "
              "data: the JPEG copy of CIFAR-10 (`prepare_cifar10.py`), "
              "test accuracy on the official 10,000 test images unless a row says otherwise.", ""]

    t2 = [r for r in rows if r["experiment"] == "table2"]
    if t2:
        lines += ["## Table 2 analog: initialization time and initial test accuracy", "",
                  "Command: `python examples/reproduce.py table2 --data-dir DIR [--latent L] [--precision P]`. "
                  "Init time covers the subset draw, every layer's statistics, codes and solves and the BatchNorm "
                  "recalibration; the forward pass is one plain eval-mode pass over the same subset as one batch, "
                  "timed right after (against the fastest batched forward the ratio is 2.5–2.8× higher; "
                  "see the speed section of RESULTS.md). "
                  "Rows run next to training jobs: compare their times within a row, not across rows.", "",
                  "| setup | latent | patches/image | samples/class | Sylvester init time (s) "
                  "| init ÷ one forward pass | initial acc. (%) | He-u initial acc. (%) "
                  "| paper: time (s) / acc. (%) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        groups = sorted({(r["setup"], r["latent"], r["patches_per_image"], int(r["samples_per_class"])) for r in t2
                         if r["initializer"] == "sylvester"})
        for setup, latent, ppi, spc in groups:
            syl = [r for r in t2 if r["initializer"] == "sylvester"
                   and (r["setup"], r["latent"], r["patches_per_image"], int(r["samples_per_class"]))
                   == (setup, latent, ppi, spc)]
            he = [r for r in t2 if r["initializer"] == "he_uniform" and r["setup"] == setup
                  and int(r["samples_per_class"]) == spc]
            ratio = [float(r["init_time_s"]) / float(r["forward_time_s"]) for r in syl if r.get("forward_time_s")]
            paper = PAPER_T2.get(spc)
            lines.append(
                f"| {setup} | {latent} | {ppi} | {spc} | {_ms([float(r['init_time_s']) for r in syl], 1, 3)} | "
                f"{_ms(ratio, 1, 2)} | "
                f"{_ms([float(r['initial_acc']) for r in syl])} | {_ms([float(r['initial_acc']) for r in he])} | "
                f"{'-' if paper is None else f'{paper[0]} / {paper[1]}'} |"
            )
        lines.append("")

    for exp, title, inits in (("table1", "Table 1 analog: few-shot training from scratch", INITS),
                              ("finetune", "Fine-tuning analog: head-only init after pretraining on classes 0-4",
                               ("sylvester_head", *RANDOM_INITS))):
        sub = [r for r in rows if r["experiment"] == exp]
        if not sub:
            continue
        # One column per (shots, epochs): a column run with a shorter budget than the paper's 200 epochs
        # is its own column, never averaged with full-length runs.
        columns = sorted({(int(r["shots"]), int(r["epochs"])) for r in sub}, key=lambda c: (c[0], -c[1]))
        cmd = ("python examples/reproduce.py table1 --data-dir DIR --shots S" if exp == "table1" else
               "python examples/reproduce.py finetune --data-dir DIR --shots S --pretrain-epochs E")
        lines += [f"## {title}", "",
                  f"Command: `{cmd}`. SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, lr ×0.1 at "
                  "1/2 and 3/4 of the epochs (the paper's 100 and 150 of 200); random crop + flip.", "",
                  "Final test accuracy % (initial in parentheses), mean ± std over seeds (n = number of seeds). "
                  "Each column names its epoch budget; a column with fewer than the paper's 200 epochs was shortened "
                  "to fit this CPU's time, with the lr schedule scaled to it, so its final accuracies are not "
                  "comparable with the paper's 200-epoch figures quoted beside them.", "",
                  "| initializer | " + " | ".join(f"{s} shots, {e} ep" for s, e in columns) + " |",
                  "| --- |" + " --- |" * len(columns)]
        labels = [(init, lat) for init in inits if init != "lsuv" or any(r["initializer"] == init for r in sub)
                  for lat in sorted({r["latent"] for r in sub if r["initializer"] == init}) or [""]]
        for init, lat in labels:
            cells = []
            for s, e in columns:
                rs = [r for r in sub if r["initializer"] == init and r["latent"] == lat and int(r["shots"]) == s
                      and int(r["epochs"]) == e]
                fin = [float(r["final_acc"]) for r in rs]
                ini = [float(r["initial_acc"]) for r in rs]
                paper = PAPER_T1.get(init, {}).get(s) if exp == "table1" else None
                cell = f"{_ms(fin)} ({_ms(ini, 100, 1).split(' (n')[0]})" if rs else "-"
                if paper:
                    cell += f"; paper {paper[0]} ({paper[1]})"
                cells.append(cell)
            lines.append(f"| {init}{f' ({lat})' if lat else ''} | " + " | ".join(cells) + " |")
        lines.append("")
        if exp == "table1":
            lines += _lsuv_vs_sylvester(sub, columns)

    for exp, key, title, fname, cmd, fixed in (
        ("fig2", "lam", "Figure 2 analog: effect of λ", "fig2_lambda.png",
         "python examples/reproduce.py fig2 --data-dir DIR --shots S --lams 0.1 1 10 100", "latent"),
        ("fig3", "latent", "Figure 3 analog: latent codes", "fig3_codes.png",
         "python examples/reproduce.py fig3 --data-dir DIR --shots S", "lam"),
    ):
        sub = [r for r in rows if r["experiment"] == exp]
        if not sub:
            continue
        groups = defaultdict(list)
        for r in sub:
            groups[r[key]].append(r)
        keys = sorted(groups, key=lambda k: float(k) if exp == "fig2" else k)
        lines += [f"## {title}", "", f"Command: `{cmd}`. {_settings(sub, fixed)}", "",
                  f"| {'λ' if key == 'lam' else key} | initial acc. (%) | final acc. (%) |", "| --- | --- | --- |"]
        for k in keys:
            lines.append(f"| {k} | {_ms([float(r['initial_acc']) for r in groups[k]])} | "
                         f"{_ms([float(r['final_acc']) for r in groups[k]])} |")
        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs = list(range(len(keys)))
        for field, marker, label in (("initial_acc", "o-", "initial"), ("final_acc", "s-", "final")):
            vals = [[100 * float(r[field]) for r in groups[k]] for k in keys]
            err = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            ax.errorbar(xs, [statistics.mean(v) for v in vals], yerr=err, fmt=marker, capsize=3, label=label)
        ax.set_xticks(xs, keys)
        ax.set_xlabel("λ" if key == "lam" else "latent code")
        ax.set_ylabel("test accuracy (%)")
        n_seeds = sorted({len(groups[k]) for k in keys})
        ax.set_title(f"{title.split(': ')[1]}: {sub[0]['shots']} shots, seeds/point {'-'.join(map(str, n_seeds))}",
                     fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(figs / fname, dpi=120)
        plt.close(fig)
        lines += ["", f"![{title}](../figures/{fname})", ""]

    sub = [r for r in rows if r["experiment"] == "fig1" and r.get("curve")]
    if sub:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        lines += ["## Figure 1 analog: test accuracy vs wall-clock time", "",
                  "Command: `python examples/reproduce.py fig1 --data-dir DIR --shots S`. "
                  f"{_settings(sub, 'latent')} Time is training time (test evaluations excluded) plus, for Sylvester, "
                  "its initialization time (LSUV: its own). "
                  "Each curve is the mean over the seeds, checkpoint by checkpoint (time and "
                  "accuracy); the table lists every seed. The machine's load (other jobs) changes the seconds "
                  "from run to run, so compare the curves' shapes, not their lengths.", "",
                  "| initializer | seed | init time (s) | initial acc. (%) | final acc. (%) "
                  "| wall-clock to final (s) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        settings = sorted({(r["shots"], r["epochs"]) for r in sub}, key=lambda k: (int(k[0]), int(k[1])))
        for (shots, epochs), init in ((k, i) for k in settings for i in INITS):
            # Seeds are averaged only within one setting of shots and epochs (same checkpoints).
            rs = sorted((r for r in sub if r["initializer"] == init and (r["shots"], r["epochs"]) == (shots, epochs)),
                        key=lambda r: int(r["seed"]))
            if not rs:
                continue
            label = init if len(settings) == 1 else f"{init}, {shots} shots, {epochs} ep"
            curves = []
            for r in rs:
                offset = _f(r, "init_time_s") or 0.0
                pts = [tuple(map(float, p.split(":"))) for p in r["curve"].split(";")]
                curves.append([(offset, float(r["initial_acc"]))] + [(t + offset, a) for t, a in pts])
                lines.append(f"| {label} | {r['seed']} | {offset:.2f} | {100 * float(r['initial_acc']):.2f} | "
                             f"{100 * float(r['final_acc']):.2f} | {curves[-1][-1][0]:.0f} |")
            if len(rs) > 1:
                lines.append(f"| {label} | mean of {len(rs)} | {_ms([_f(r, 'init_time_s') or 0.0 for r in rs], 1.0)} | "
                             f"{_ms([float(r['initial_acc']) for r in rs])} | "
                             f"{_ms([float(r['final_acc']) for r in rs])} | "
                             f"{_ms([c[-1][0] for c in curves], 1.0, 0)} |")
            n = min(len(c) for c in curves)  # equal within one setting; min() guards a cut-short curve
            ax.plot([statistics.mean(c[i][0] for c in curves) for i in range(n)],
                    [100 * statistics.mean(c[i][1] for c in curves) for i in range(n)], label=f"{label} (n={len(rs)})")
        ax.set_xlabel("wall-clock time incl. initialization (s)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Figure 1 analog: {', '.join(sorted({k[0] for k in settings}, key=int))} shots", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figs / "fig1_accuracy_vs_time.png", dpi=120)
        plt.close(fig)
        lines += ["", "![Figure 1](../figures/fig1_accuracy_vs_time.png)", ""]
    out = out_dir / "cifar10.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    _splice(out_dir.parent / "RESULTS.md", lines)
    return out


BEGIN = "<!-- cifar10 tables: begin (written by `python examples/reproduce.py report`) -->"
END = "<!-- cifar10 tables: end -->"


def _splice(results: Path, lines: list[str]) -> None:
    """Replace the CIFAR-10 section of ``RESULTS.md`` (between the markers) with ``lines``."""
    body = "\n".join(["#" + ln if ln.startswith("#") else ln for ln in lines]).replace("](../figures/", "](figures/")
    block = f"{BEGIN}\n{body}\n{END}"
    text = results.read_text() if results.exists() else "# Results\n\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    results.write_text(text)
    print(f"updated {results}")
