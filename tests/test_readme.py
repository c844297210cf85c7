"""Every README command and snippet does what the text says when pasted (issue 17.6).

The ``lightning-sylv`` commands of the README's ``bash`` blocks run in order, in-process through the
real CLI, in a scratch directory holding ``configs/``, with the batches per epoch bounded; each
``fit`` must bound its epochs itself (a config's ``max_epochs`` or ``--trainer.max_epochs``:
Lightning's default is 1000). Then every ``python`` block runs with ``Trainer`` bounded the same way,
and every ``Trainer(...)`` in it must be given ``max_epochs``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Once a command is seen to bound its epochs, one epoch of two batches shows that it runs.
BOUND = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def _commands() -> list[list[str]]:
    """The README's ``lightning-sylv`` / ``python -m lightning_sylv`` command lines, as argument lists."""
    out = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["lightning-sylv"]:
                    out.append(words[1:])
                elif words[:3] == ["python", "-m", "lightning_sylv"]:
                    out.append(words[3:])
    return out


def _bounds_epochs(args: list[str]) -> bool:
    if any(a.startswith("--trainer.max_epochs") for a in args):
        return True
    if "--config" in args:
        config = yaml.safe_load((ROOT / args[args.index("--config") + 1]).read_text())
        return "max_epochs" in (config.get("trainer") or {})
    return False


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    (root / "configs").symlink_to(ROOT / "configs")
    return root


def test_the_readme_has_the_commands_it_promises():
    commands = [" ".join(c) for c in _commands()]
    assert "fit --config configs/digits.yaml" in commands
    assert any("digits_fuse_teacher.yaml" in c for c in commands) and len(commands) >= 8


def test_every_readme_command_runs_and_bounds_its_epochs(scratch, monkeypatch, capsys):
    from lightning_sylv.cli import cli

    monkeypatch.chdir(scratch)
    for args in _commands():
        if "--help" in args or any(a.endswith(".help") for a in args):
            with pytest.raises(SystemExit) as stop:
                cli(args)
            assert stop.value.code == 0, args
            assert "usage" in capsys.readouterr().out, args
            continue
        assert args[0] == "fit" and _bounds_epochs(args), f"'{' '.join(args)}' does not bound max_epochs"
        run = cli([*args, *BOUND])
        assert run.trainer.current_epoch == 1, args
    assert (scratch / "checkpoints" / "digits_mlp_teacher.ckpt").is_file()


def test_every_readme_snippet_runs(scratch, monkeypatch):
    import lightning.pytorch

    class BoundedTrainer(lightning.pytorch.Trainer):
        def __init__(self, *args, **kwargs):
            assert "max_epochs" in kwargs, "a README snippet builds a Trainer without max_epochs"
            assert kwargs["max_epochs"] <= 30
            kwargs.update(
                max_epochs=1,
                limit_train_batches=2,
                limit_val_batches=2,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lightning.pytorch, "Trainer", BoundedTrainer)
    monkeypatch.chdir(scratch)
    if not (scratch / "checkpoints" / "digits_mlp_teacher.ckpt").is_file():  # this test alone
        from lightning_sylv.cli import cli

        cli(["fit", "--config", "configs/digits_fuse_teacher.yaml", *BOUND])
    snippets = _blocks("python")
    assert len(snippets) >= 5
    for code in snippets:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)  # the README's own code
