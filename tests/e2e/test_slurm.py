"""SLURM without a cluster: the real sbatch script under a stand-in ``srun`` (2 tasks on one node,
CPU DDP over gloo), SIGUSR1 as SLURM sends it before the time limit (the requeue checkpoint) or
SIGTERM as preemption sends it (``last.ckpt``), and a second launch of the same job id that resumes
by itself, into the same run folder, from the newer of the two."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import wait_for, write_tiny_vit_weights

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

FAKE_SRUN = """#!/bin/bash
# srun stand-in: start SLURM_NTASKS copies of the command with their task ids, wait for all.
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$@" >"$TASK_LOGS/task$i.out" 2>&1 &
  pids+=($!)
  echo $! >>"$TASK_LOGS/pids"
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
"""
FAKE_SCONTROL = '#!/bin/bash\necho "$@" >>"$TASK_LOGS/scontrol.log"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_pids(logs: Path) -> list[int]:
    pids = logs / "pids"
    return [int(p) for p in pids.read_text().split()] if pids.exists() else []


def launch(tmp_path: Path, run_dir: Path, logs: Path, max_steps: int, weights: str) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    overlay = tmp_path / f"overlay-{max_steps}.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "accelerator": "cpu",
                    "strategy": "ddp",
                    "max_steps": max_steps,
                    "val_check_interval": None,
                    "limit_val_batches": 1,
                    "enable_progress_bar": False,
                    "logger": {
                        "class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(run_dir)},
                    },
                },
                "model": {"pretrained": True, "checkpoint_path": weights},
                "data": {"init_args": {"augment": False, "max_train_samples": 2048}},
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "tests"),
        "PATH": f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "TASK_LOGS": str(logs),
        "CONFIG": str(ROOT / "configs" / "debug.yaml"),
        "RUN_DIR": str(run_dir),
        "SLURM_JOB_NAME": "genlora-test",
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    script = ROOT / "docker" / "slurm" / "single_node.sbatch"
    # Lightning saves the requeue checkpoint inside the signal handler, with a barrier. A CPU rank
    # in the middle of gloo collectives runs its handler out of step with the other rank, and both
    # wait for ever; real jobs spend most time outside blocking calls (NCCL runs on streams). The
    # pause after each batch, marked on disk, lets the test signal when both ranks are outside them.
    pause = json.dumps({"class_path": "helpers.Sleep", "init_args": {"seconds": 1.5, "marker_dir": str(logs)}})
    command = ["bash", str(script), "--config", str(overlay), "--trainer.callbacks+", pause]
    return subprocess.Popen(command, cwd=tmp_path, env=env)


def stand_ins(tmp_path: Path) -> str:
    (tmp_path / "bin").mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (tmp_path / "bin" / name).write_text(body)
        (tmp_path / "bin" / name).chmod(0o755)
    return str(write_tiny_vit_weights(tmp_path / "vit.safetensors"))


def one_run_folder(run_dir: Path) -> Path:
    """Every logger's files of every attempt of the job are in one folder, named by the job id."""
    folders = {p.parent for p in run_dir.rglob("metrics.csv")}
    assert [f.name for f in folders] == ["slurm-4242"], folders
    return folders.pop()


def signal_when_paused(job_logs: Path, signum: int) -> None:
    """Send ``signum`` to every task of the job (as SLURM does) once both ranks pause between batches."""
    paused = [job_logs / f"sleeping{rank}" for rank in (0, 1)]
    wait_for(lambda: all(p.exists() for p in paused), 180, "both ranks to pause between batches")
    for pid in task_pids(job_logs):
        os.kill(pid, signum)


def kill_job(job_logs: Path) -> None:
    for pid in task_pids(job_logs):  # SLURM kills what is left of the job
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def first_attempt(tmp_path: Path) -> tuple[str, Path, Path, subprocess.Popen]:
    """The job's first start, long enough to be interrupted: (weights, run folder, task logs, job)."""
    weights = stand_ins(tmp_path)
    run_dir, logs = tmp_path / "outputs" / "run", tmp_path / "logs1"
    return weights, run_dir, logs, launch(tmp_path, run_dir, logs, max_steps=100_000, weights=weights)


def test_sigusr1_writes_requeue_checkpoint_and_relaunch_resumes(tmp_path):
    weights, run_dir, first_logs, job = first_attempt(tmp_path)
    try:
        signal_when_paused(first_logs, signal.SIGUSR1)
        hpc = run_dir / "hpc_ckpt_1.ckpt"
        wait_for(lambda: hpc.exists() and (first_logs / "scontrol.log").exists(), 120, "the requeue checkpoint")
        time.sleep(1)  # let the write finish before the job is killed, as SLURM would after the requeue
    finally:
        kill_job(first_logs)  # SLURM kills the job after the requeue
        job.wait(timeout=60)
    assert (first_logs / "scontrol.log").read_text().split() == ["requeue", "4242"]
    saved = torch.load(hpc, map_location="cpu", weights_only=True)
    step = saved["global_step"]
    assert step > 0 and any("latent_A" in k for k in saved["state_dict"])

    second_logs = tmp_path / "logs2"
    job = launch(tmp_path, run_dir, second_logs, max_steps=step + 3, weights=weights)
    assert job.wait(timeout=300) == 0, (second_logs / "task0.out").read_text()[-3000:]
    out = (second_logs / "task0.out").read_text()
    assert f"slurm-4242 restarted: resuming from {hpc}" in out
    assert f"Restoring states from the checkpoint path at {hpc}" in out
    folder = one_run_folder(run_dir)
    last = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == step + 3
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    steps = {int(float(r["step"])) for r in rows if r.get("step")}
    assert min(steps) <= step < max(steps), "one log: the first attempt's rows and the resumed attempt's"


def test_sigterm_preemption_saves_last_ckpt_and_the_requeued_job_resumes_from_it(tmp_path):
    weights, run_dir, first_logs, job = first_attempt(tmp_path)
    try:
        signal_when_paused(first_logs, signal.SIGTERM)  # preemption: SIGTERM, no SIGUSR1
        assert job.wait(timeout=180) == 143
    finally:
        kill_job(first_logs)
    folder = one_run_folder(run_dir)
    saved = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    step = saved["global_step"]
    assert step > 0 and not list(run_dir.glob("hpc_ckpt_*.ckpt"))

    second_logs = tmp_path / "logs2"  # SLURM requeues the preempted job: same id, same command
    job = launch(tmp_path, run_dir, second_logs, max_steps=step + 2, weights=weights)
    assert job.wait(timeout=300) == 0, (second_logs / "task0.out").read_text()[-3000:]
    out = (second_logs / "task0.out").read_text()
    assert f"slurm-4242 restarted: resuming from {folder / 'checkpoints' / 'last.ckpt'}" in out
    assert one_run_folder(run_dir) == folder
    last = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == step + 2


def test_a_tune_job_array_shares_one_study_across_its_tasks(tmp_path):
    """docker/slurm/tune_array.sbatch as two array tasks at once (each one srun task, on the CPU here):
    both join the same journal study, which ends with the trial budget finished, each trial run once."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    stand_ins(tmp_path)
    study_dir = tmp_path / "outputs" / "tune"
    tasks = []
    for task in (0, 1):
        logs = tmp_path / f"logs{task}"
        logs.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"),
               "PATH": f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
               "TASK_LOGS": str(logs), "CONFIG": str(ROOT / "configs" / "debug.yaml"), "TRIALS": "3",
               "STUDY_DIR": str(study_dir), "SLURM_NTASKS": "1", "SLURM_ARRAY_JOB_ID": "77",
               "SLURM_ARRAY_TASK_ID": str(task), "SLURM_JOB_ID": str(78 + task)}  # fmt: skip
        script = ROOT / "docker" / "slurm" / "tune_array.sbatch"
        tasks.append(subprocess.Popen(["bash", str(script), "--monitor.plots", "false"], cwd=tmp_path, env=env))
    for job in tasks:
        assert job.wait(timeout=900) == 0, (tmp_path / "logs0" / "task0.out").read_text()[-3000:]
    storage = JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    trials = optuna.load_study(storage=storage, study_name="debug").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert (study_dir / "best.yaml").is_file()
    assert sorted(p.name for p in study_dir.glob("trial_*")) == ["trial_0", "trial_1", "trial_2"]
