"""Where a study lives, and how it survives killed workers.

A study is an Optuna study in a storage: a SQLite file in the output folder by default, any Optuna
storage URL (``postgresql://...``), or a journal file (``journal:PATH``, or a path ending in
``.journal``) for many workers on a shared file system, where SQLite's locking is not to be trusted.

Rerunning the same command resumes the study. The study records what it optimises (the resolved config
without the swept keys and output paths, the space, the metric, the step budget), so a second config
under the same name is refused instead of mixing two objectives in one table.

A trial whose worker died without a word (``kill -9``, a node lost) stays RUNNING in the storage. Each
trial records its host and process and beats every :data:`HEARTBEAT_S` seconds; before every trial, a
worker marks FAIL the RUNNING trials whose process is gone from its own host, or whose heartbeat is older
than :data:`STALE_S` (another host). A SIGTERM (a SLURM preemption) fails the trial at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

HEARTBEAT_S = 30.0
STALE_S = 300.0  # ten missed heartbeats: another host's worker is gone


def storage_url(given: str | None, output_dir: Path) -> str:
    """The storage as the user gave it, or the SQLite file ``study.db`` of the output folder."""
    return given or f"sqlite:///{(output_dir / 'study.db').absolute()}"


def journal_path(url: str) -> str | None:
    """The journal file of ``journal:PATH`` or ``PATH.journal``; None for a database URL."""
    if url.startswith("journal:"):
        return url[len("journal:") :].removeprefix("//")
    if "://" not in url:
        return url
    return None


def check_storage(url: str) -> None:
    """Refuse, without creating anything, a storage that cannot be opened: a file in a missing folder,
    an unknown URL scheme or driver."""
    path = journal_path(url)
    if path is None and url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
    if path is not None and path != ":memory:":
        folder = Path(path).absolute().parent
        if not folder.is_dir():
            raise ValueError(f"the storage {url} cannot be opened: the folder {folder} does not exist; create it "
                             "or give another path.")  # fmt: skip
        if not os.access(folder, os.W_OK):
            raise ValueError(f"the storage {url} cannot be opened: the folder {folder} is not writable.")
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as err:
        raise ValueError(f"the storage {url} cannot be opened ({str(err).splitlines()[0]}); give a sqlite:///FILE "
                         "URL, journal:FILE for a shared file system, or a database URL whose driver is "
                         "installed.") from None  # fmt: skip


def open_storage(url: str) -> Any:
    """The Optuna storage of ``url`` (see the module docstring)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = journal_path(url)
    try:
        if path is not None:
            return JournalStorage(JournalFileBackend(path))
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                          if url.startswith("sqlite") else None)  # fmt: skip
    except Exception as err:  # a database that refuses the connection, a file it cannot lock
        raise ValueError(f"the storage {url} cannot be opened ({str(err).splitlines()[0]}).") from None


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted key where two JSON-like values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    if a != b:
        return f"{prefix.rstrip('.')} ({json.dumps(b)} there, {json.dumps(a)} here)"
    return None


def load_study(
    storage: Any, name: str, direction: str, recipe: dict[str, Any], sampler: Any, pruner: Any
) -> tuple[Any, bool]:
    """``(study, created)``: the study ``name`` of ``storage``, made with ``recipe`` (what it optimises)
    if new; an existing study made from another recipe is refused."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner)  # fmt: skip
        study.set_user_attr("recipe", recipe)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
    held = study.user_attrs.get("recipe")
    if held is not None and held != recipe:
        where = first_difference(recipe, held)
        raise ValueError(
            f"the study {name!r} in this storage was made from another config or space (they differ at {where}); "
            "give --study_name a new name or --output_dir another folder."
        )
    return study, False


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def fail_stale_trials(study: Any) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone (module docstring); their numbers."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host, now, failed = socket.gethostname(), time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if "worker_pid" not in attrs:
            beat = trial.datetime_start.timestamp() if trial.datetime_start else now
        else:
            beat = float(attrs.get("heartbeat", 0.0))
        here = attrs.get("worker_host") == host and "worker_pid" in attrs
        gone = here and not process_alive(int(attrs["worker_pid"]))
        if gone or now - beat > STALE_S:
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "failure", "its worker stopped without a word")
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                failed.append(trial.number)
            except (UpdateFinishedTrialError, RuntimeError):  # another worker got there first
                pass
    return failed


class Heartbeat:
    """Records the trial's worker, then its heartbeat every :data:`HEARTBEAT_S` seconds, in a thread."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.stopped = threading.Event()
        trial.set_user_attr("worker_host", socket.gethostname())
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("heartbeat", time.time())
        self.thread = threading.Thread(target=self._beat, daemon=True, name="tune-heartbeat")
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            # the trial ended meanwhile, or the storage is busy: the next beat tries again
            with contextlib.suppress(Exception):
                self.trial.set_user_attr("heartbeat", time.time())

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
