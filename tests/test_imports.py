"""The math imports without Lightning (issue 15.3): the package ``__init__`` loads the callbacks lazily."""

import subprocess
import sys

HEAVY = ("lightning", "lightning.pytorch", "matplotlib", "torchmetrics")
MATH = (
    "lightning_sylv",
    "lightning_sylv.solver",
    "lightning_sylv.engine",
    "lightning_sylv.codes",
    "lightning_sylv.lowrank.factorize",
)


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_the_math_imports_neither_lightning_nor_matplotlib():
    code = (
        "import importlib, sys\n"
        f"for name in {MATH!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert _run(code) == "[]"


def test_the_callbacks_load_on_first_use():
    code = (
        "import sys, lightning_sylv\n"
        "assert 'lightning' not in sys.modules\n"
        "cb = lightning_sylv.SylvesterInit(samples_per_class=3)\n"
        "from lightning_sylv import FuseInit, LowRankInit, sylvester_init_\n"
        "assert set(lightning_sylv.__all__) <= set(dir(lightning_sylv))\n"
        "print(type(cb).__module__, 'lightning' in sys.modules)\n"
    )
    assert _run(code) == "lightning_sylv.callbacks.sylvester True"
    out = subprocess.run(
        [sys.executable, "-c", "import lightning_sylv; lightning_sylv.Nope"], capture_output=True, text=True, timeout=60
    )
    assert "has no attribute 'Nope'" in out.stderr


def test_all_lists_exactly_the_lazy_names():
    import lightning_sylv

    assert sorted(lightning_sylv.__all__) == sorted(lightning_sylv._LAZY)
    assert lightning_sylv.__all__ == sorted(lightning_sylv._LAZY)  # same order as before it was spelled out
