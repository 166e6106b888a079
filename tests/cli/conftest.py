"""Shared by the CLI tests: run `dlforge ...` in-process and capture what it printed."""

from __future__ import annotations

import pytest

from dlforge.cli.main import main


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> (exit status, stdout, stderr) of main(argv); argparse's SystemExit becomes the status."""

    def run(*argv) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
