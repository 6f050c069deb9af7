"""The `skinscan` command as a whole: every option has help, factory verbs name their missing extra, building the
parser loads no factory library, and `skinscan`'s top-level names stay light."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from skinscan.cli import build_parser, main

HEAVY = ("torch", "torchvision", "pandas", "scipy", "sklearn", "matplotlib", "onnx", "skimage", "skinscan.factory")


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("skinscan",)):
    """(command path, parser) for the root and every sub-command below it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, sub in action.choices.items():
                assert name in helped, f"`{' '.join((*path, name))}` has no help line in `{' '.join(path)} --help`"
                yield from commands(sub, (*path, name))


def test_every_option_of_every_command_has_help():
    missing = [f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
               for path, parser in commands(build_parser()) for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert not missing, "options without help=: " + ", ".join(missing)


def test_the_walk_reaches_nested_actions():
    """The help test above is only as good as its walk: it must see `data split` and `predict`."""
    names = {" ".join(path) for path, _ in commands(build_parser())}
    assert {"skinscan data split", "skinscan data folds", "skinscan data download", "skinscan predict",
            "skinscan train", "skinscan app"} <= names


@pytest.mark.parametrize(("argv", "blocked", "extra"), [
    (["train"], "torch", "train"),
    (["evaluate"], "torch", "train"),
    (["quantize"], "onnx", "train"),
    (["benchmark", "--checkpoint", "best.pt"], "torch", "train"),
    (["data", "split"], "pandas", "report"),
    (["data", "validate"], "sklearn", "report"),
    (["card"], "matplotlib", "report"),
])
def test_a_factory_verb_without_its_extra_says_what_to_install(argv, blocked, extra, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, blocked, None)  # as if not installed: `import` raises ImportError
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f'pip install "skinscan[{extra}]"' in err and blocked in err and "Traceback" not in err


def test_building_the_parser_loads_no_factory_library():
    """`skinscan --help` and the runtime verbs must start without the extras (import-linter checks the runtime's
    own imports; this checks what the CLI loads before a verb runs)."""
    code = ("import sys, skinscan.cli, skinscan.runtime; skinscan.cli.build_parser(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith({HEAVY[-1]!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_top_level_names_are_lazy():
    code = ("import sys, skinscan; light = 'onnxruntime' not in sys.modules and 'numpy' not in sys.modules; "
            "from skinscan import Classifier, Prediction; import skinscan.runtime as r; "
            "print(light, Classifier is r.Classifier, Prediction is r.Prediction)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True", "True", "True"], result.stderr
    with pytest.raises(AttributeError, match="no attribute 'Classifer'"):
        import skinscan

        skinscan.Classifer  # noqa: B018
