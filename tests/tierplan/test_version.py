"""`tierplan --version` prints the installed package's version and exits 0."""

from __future__ import annotations

from importlib.metadata import version

from tierplan.cli import main


def test_version_prints_the_installed_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr()
    assert out.out == f"tierplan {version('tierplan')}\n" and out.err == ""
