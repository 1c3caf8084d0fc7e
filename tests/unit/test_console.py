"""What the terminal shows: advertisements dropped, warnings on one line, a true epoch description."""

from __future__ import annotations

import logging
import types
import warnings

import pytest

from genlora_pl.console import _step_description, quiet


def test_adverts_are_dropped_and_other_lines_kept(caplog):
    quiet()
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_torchaos_enum_registration_lines_are_dropped_at_its_import():
    """torch >= 2.10 logs two `_pytree.py:630` lines at every import of torchao (peft and transformers
    import it too): dropped after quiet(), which every subcommand calls before those imports."""
    import subprocess
    import sys

    pytest.importorskip("torchao")
    code = "from genlora_pl.console import quiet; {} import torchao; print('imported')"
    plain, quieted = (
        subprocess.run([sys.executable, "-c", code.format(call)], capture_output=True, text=True, check=True)
        for call in ("", "quiet();")
    )
    assert quieted.stdout == plain.stdout == "imported\n"
    if "is an Enum subclass" not in plain.stderr:
        pytest.skip("this torch / torchao pair logs nothing at torchao's import")
    assert "is an Enum subclass" not in quieted.stderr and "_pytree" not in quieted.stderr


def test_warnings_print_as_one_line():
    quiet()
    line = warnings.formatwarning("something to know", UserWarning, "/x/y.py", 3, "code()")
    assert line == "warning: something to know\n"
    assert warnings.formatwarning("moved", FutureWarning, "f.py", 1).startswith("deprecated: moved")


def test_step_limited_runs_do_not_show_a_negative_epoch_count():
    trainer = types.SimpleNamespace(max_epochs=-1, max_steps=6, global_step=2)
    assert _step_description(trainer, 0) == "Epoch 0 (max_steps 6)"
    assert _step_description(types.SimpleNamespace(max_epochs=10, max_steps=-1), 2) == "Epoch 2/9"


def test_the_summary_comes_after_the_last_progress_bar_and_the_bar_is_not_cut(tmp_path):
    """A batch job's log (stdout is a file): the bar is 160 columns, not 80, and its last frame is
    drawn before the run summary, not after it."""
    from helpers import run_cli

    out = run_cli(
        "fit", "--config", "debug.yaml", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "false", "--monitor.plots", "false", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    summary = lines.index("Adapter summary")
    bars = [i for i, line in enumerate(lines) if line.startswith("Epoch 0")]
    assert bars and max(bars) < summary
    assert any("train/loss" in lines[i] for i in bars)  # the metrics column fits on the bar's lines
