"""Every module's ``__all__``: it names what the module defines for others, and nothing dead."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import lightning_sylv

PACKAGE = Path(lightning_sylv.__file__).parent
MODULES = sorted(
    m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="lightning_sylv.") if not m.name.endswith("__main__")
)


def _source_of_others(module_file: Path) -> str:
    files = [*PACKAGE.rglob("*.py"), *Path(__file__).parent.rglob("*.py")]
    return "\n".join(p.read_text() for p in files if p != module_file)


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_the_public_functions_and_classes_defined_here(name):
    module = importlib.import_module(name)
    exported = set(getattr(module, "__all__", ()))
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names undefined {missing}"
    if not hasattr(module, "__all__"):
        return
    defined = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == name
    }
    assert defined <= exported, f"{name} defines public {sorted(defined - exported)} outside __all__"


@pytest.mark.parametrize("name", [m for m in MODULES if m.rsplit(".", 1)[-1].startswith("_") and "__init__" not in m])
def test_private_modules_export_nothing_unused(name):
    """A private module's exports are internal API: each must be used elsewhere (package or tests)."""
    module = importlib.import_module(name)
    others = _source_of_others(Path(module.__file__))
    unused = [n for n in getattr(module, "__all__", ()) if not re.search(rf"\b{re.escape(n)}\b", others)]
    assert not unused, f"{name} exports {unused}, used nowhere else in the package"
