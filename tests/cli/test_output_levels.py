"""The output level every command takes: progress lines (info, the default) on stdout, warnings as
"dlforge: warning: ..." on stderr, `--quiet` keeping only warnings and errors, `--verbose` adding debug lines. The
library logs through the "dlforge" logger; the CLI sets its handler and level."""

from __future__ import annotations

import logging

import pytest

TINY = ["--preset", "tiny", "--set", "block_size=16", "--set", "n_layer=1", "--set", "n_embd=32",
        "--set", "eval_interval=2", "--max-steps", "4", "--seed", "5"]


@pytest.mark.parametrize("level_flag, shows_progress", [([], True), (["--quiet"], False), (["--verbose"], True)])
def test_progress_lines_follow_the_level(cli, synthetic_text_file, tmp_path, level_flag, shows_progress):
    code, out, err = cli("train", "gpt", "--data", synthetic_text_file, "--out", tmp_path / "run", *TINY, *level_flag)
    assert code == 0, err
    assert ("step 2: val loss " in out) is shows_progress and ("step 4: val loss " in out) is shows_progress
    assert "done: reached max_steps=4; step 4" in out  # the command's own result line is always printed
    assert ("it/s" in err or "step/s" in err or "s/step" in err) is shows_progress  # the tqdm bar


def test_levels_and_format_of_library_messages(cli, tmp_path, capsys):
    from dlforge.cli.main import configure_logging

    log = logging.getLogger("dlforge.some.module")
    for quiet, verbose, shown in ((False, False, "info warning"), (True, False, "warning"), (False, True,
                                                                                           "debug info warning")):
        configure_logging(quiet=quiet, verbose=verbose)
        log.debug("debug line")
        log.info("info line")
        log.warning("careful")
        out, err = capsys.readouterr()
        assert ("debug line" in out) is ("debug" in shown) and ("info line" in out) is ("info" in shown)
        assert err == "dlforge: warning: careful\n"
    configure_logging()
    assert sum(getattr(h, "dlforge_cli", False) for h in logging.getLogger("dlforge").handlers) == 1  # not piled up


def test_quiet_and_verbose_exclude_each_other(cli, tmp_path):
    code, _, err = cli("info", tmp_path, "--quiet", "--verbose")
    assert code == 2 and "not allowed with argument" in err and len(err.strip().splitlines()) == 1
