"""Optional packages: each one, hidden, makes the command that needs it fail in one line naming the extra to install."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from melanet import cli
from melanet.errors import MissingDependencyError
from melanet.optional import OPTIONAL, install_hint, require

PACKAGE = Path(cli.__file__).parent


def hide(monkeypatch, *names: str) -> None:
    """Make ``import name`` (and of its submodules, imported or not) fail as if the package were not installed."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)
        # A shim that re-exports it (dask.distributed for distributed), once imported by an earlier test in this
        # process, would stay importable from the cache: forget it, so that importing it again meets the hole.
        for shim in [m for m in sys.modules if m.endswith("." + name)]:
            monkeypatch.delitem(sys.modules, shim)


def run_cli(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["melanet", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


@pytest.fixture()
def dirs(tmp_path) -> dict[str, Path]:
    (tmp_path / "dicom").mkdir()
    (tmp_path / "data").mkdir()
    return {"dicom": tmp_path / "dicom", "data": tmp_path / "data", "out": tmp_path / "out"}


# (hidden packages, command line, feature named in the message, install command)
CASES = {
    "optuna": (["optuna"], ["train-gbdt", "--data", "{data}", "--out", "{out}", "--tune", "4"],
               "train-gbdt --tune", 'pip install "melanet[scale]"'),
    "dask": (["dask", "distributed"], ["train-gbdt", "--data", "{data}", "--out", "{out}", "--backend", "dask", "--engine", "xgboost"],
             "train-gbdt --backend dask", 'pip install "melanet[scale]"'),
    "distributed": (["distributed"], ["ingest", "{dicom}", "--out", "{out}", "--engine", "dask"],
                    "ingest --engine dask", 'pip install "melanet[scale]"'),
    "mlflow": (["mlflow"], ["train-gbdt", "--data", "{data}", "--out", "{out}", "--track", "mlflow"],
               "--track mlflow", 'pip install "melanet[scale]"'),
    "tensorboard": (["tensorboard", "torch.utils.tensorboard"],
                    ["train-gbdt", "--data", "{data}", "--out", "{out}", "--track", "tensorboard"],
                    "--track tensorboard", 'pip install "melanet[scale]"'),
    "SimpleITK": (["SimpleITK"], ["ingest", "{dicom}", "--out", "{out}", "--reader", "sitk"],
                  "ingest --reader sitk", 'pip install "SimpleITK"'),
}


@pytest.mark.parametrize("package", sorted(CASES))
def test_missing_package_is_one_line_naming_the_extra(package, monkeypatch, capsys, dirs):
    hidden, args, feature, hint = CASES[package]
    hide(monkeypatch, *hidden)
    code, output = run_cli(monkeypatch, capsys, [a.format(**dirs) for a in args])
    message = " ".join(output.split())  # the console wraps long lines at its width
    assert code == 2
    assert message == f"error: {feature} needs {package}, which is not installed; {hint}"
    assert "Traceback" not in output
    assert not dirs["out"].exists()  # refused before any work


def test_every_optional_package_has_a_case():
    assert set(OPTIONAL) == set(CASES)


def test_optional_packages_are_imported_only_through_require():
    """A plain ``import optuna`` anywhere in melanet would bypass the message; the helper must be the only way in."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "optional.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] in OPTIONAL or name.startswith("torch.utils.tensorboard"):
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {name}")
    assert offenders == []


def test_require_names_the_missing_package_of_a_submodule(monkeypatch):
    hide(monkeypatch, "distributed")
    with pytest.raises(MissingDependencyError) as info:
        require("dask.distributed", "a feature")
    assert str(info.value) == 'a feature needs distributed, which is not installed; pip install "melanet[scale]"'
    assert install_hint("numpy_financial") == "pip install numpy_financial"


def test_shell_user_sees_one_line_and_no_traceback(tmp_path):
    """The whole way a user meets it: ``python -m melanet train-gbdt --tune`` without optuna installed."""
    code = ("import runpy, sys; sys.modules['optuna'] = None; "
            f"sys.argv = ['melanet', 'train-gbdt', '--data', {str(tmp_path)!r}, '--out', {str(tmp_path / 'o')!r}, "
            "'--tune', '8']; runpy.run_module('melanet', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert " ".join(result.stderr.split()) == ('error: train-gbdt --tune needs optuna, which is not installed; '
                                               'pip install "melanet[scale]"')
    assert result.stdout == ""
