"""The SLURM and Docker files: syntax, lint, and agreement with the README and the trainer."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = sorted((ROOT / "docker" / "slurm").glob("*.sbatch"))
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' brings it)")
    return found


@pytest.mark.parametrize("script", SBATCH, ids=[s.name for s in SBATCH])
def test_sbatch_files_parse_and_pass_shellcheck(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("script", SBATCH, ids=[s.name for s in SBATCH])
def test_sbatch_counts_match_the_trainer_and_requeue(script):
    text = script.read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert opts["ntasks-per-node"] == opts["gpus-per-node"]  # one process per GPU
    assert opts["signal"] == "SIGUSR1@90" and "#SBATCH --requeue" in text
    assert "srun " in text and "python -m genlora_pl fit" in text
    assert '--trainer.num_nodes "$SLURM_JOB_NUM_NODES"' in text
    assert '--trainer.devices "$SLURM_NTASKS_PER_NODE"' in text
    assert "${SLURM_JOB_ID}" in text  # a requeued job finds its hpc checkpoint in the same folder


def test_dockerfile_passes_hadolint():
    out = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_installs_like_the_readme_and_runs_the_cli():
    text = DOCKERFILE.read_text()
    readme = (ROOT / "README.md").read_text()
    install = re.search(r'pip install (-e "\.\[[\w,]+\]")', readme).group(1)
    assert f"pip install --no-cache-dir {install}" in text
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime", base)  # pinned, with CUDA
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M)
    assert 'ENTRYPOINT ["python", "-m", "genlora_pl"]' in text
    assert re.search(r"^VOLUME \[.*data.*outputs.*\]", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "outputs", ".git"} <= set(ignored)
    # every COPY source exists in the build context (the repository root)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in [w for w in shlex.split(line) if not w.startswith("--")][:-1]:
            assert (ROOT / source).exists(), source
