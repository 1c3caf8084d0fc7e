"""The README's commands, run as a user would run them, so the docs cannot rot."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genlora_pl.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def quick_start() -> list[str]:
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_and_ci_runs_the_second():
    install_and_run, tests = quick_start()
    assert "pip install" in install_and_run and "fit --config configs/quickstart.yaml" in install_and_run
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci
    assert install_and_run.split(" && .venv/bin/python -m genlora_pl")[0] in ci  # the same install


OVERRIDES = [
    line.split("#")[0].strip()
    for line in re.search(r"## Configs and overrides.*?```bash\n(.*?)```", README, re.S).group(1).splitlines()
    if line.startswith("python -m genlora_pl fit") and "--ckpt_path" not in line
]


@pytest.mark.parametrize("command", OVERRIDES)
def test_readme_override_commands_parse(command, capsys):
    args = shlex.split(command)[3:]
    if "--print_config" not in args:
        args.append("--print_config")
    with pytest.raises(SystemExit) as exit_info:
        main([args[0], "--config", str(ROOT / args[2]), *args[3:]])
    assert exit_info.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["adapter"]["method"] in ("genlora", "lora", "none")


@pytest.mark.slow
def test_quick_start_main_job_learns(tmp_path):
    """The first quick-start command's job, on real pretrained weights and real data."""
    command = quick_start()[0].split(" && ")[-1]
    args = shlex.split(command)
    assert args[:3] == [".venv/bin/python", "-m", "genlora_pl"]
    out = subprocess.run(
        [sys.executable, *args[1:3], args[3], "--config", str(ROOT / args[5])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    accuracy = float(re.search(r"best val/acc\s+([0-9.]+)", text).group(1))
    assert accuracy > 0.8  # 5 balanced-ish classes: chance is about 0.2
    assert list(tmp_path.glob("outputs/quickstart/*/version_0/spectra.png"))
    assert list(tmp_path.glob("outputs/quickstart/*/version_0/checkpoints/last.ckpt"))
