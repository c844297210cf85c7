"""The runnable examples (``>>>``) in the package's docstrings run and give what they show."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import lightning_sylv

PACKAGE = Path(lightning_sylv.__file__).parent


def _source(name: str) -> str:
    path = PACKAGE.joinpath(*name.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path.read_text()


WITH_EXAMPLES = sorted(
    m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="lightning_sylv.") if ">>>" in _source(m.name)
)


def test_the_public_math_has_examples():
    assert {"lightning_sylv.engine", "lightning_sylv.solver", "lightning_sylv.lowrank.engine"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
