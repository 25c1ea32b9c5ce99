"""One training job, many processes: which task a process reports into, and its rank.

Three ways processes share a task, tried in this order by ``Task.init``:

1. **Launched by a process that has a task** (a master starting workers with
   ``subprocess``, a launcher script): the master exports its task in
   ``ARTISYNC_TASK``, so a child's ``Task.init`` joins it, as ClearML's does.
2. **Ranks started together by a launcher** (torchrun, ``srun``, ``mpirun``) with no
   Python master in common: every rank derives the same task id from what the
   launcher gives all of them (``TORCHELASTIC_RUN_ID``; ``SLURM_JOB_ID`` and
   ``SLURM_STEP_ID``; Open MPI's or PMIx's job id), or from ``ARTISYNC_TASK_ID``
   when the user exports one. No rank waits for another.
3. Otherwise, a new task.

The process that starts a task (the master, or rank 0) announces it and closes it:
the task is ``completed`` when that process completes. Any process that fails marks
the task ``failed``, and a failure is final: a later ``completed`` does not undo it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENV_TASK = "ARTISYNC_TASK"  # exported by a process with a task, for the processes it starts
ENV_TASK_ID = "ARTISYNC_TASK_ID"  # set by the user: every process of the job shares this task

# (rank, local rank, world size) as each launcher names them
_RANKS = (
    ("RANK", "LOCAL_RANK", "WORLD_SIZE"),  # torchrun / torch.distributed.run
    ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMIX_RANK", "", ""),
    ("PMI_RANK", "", "PMI_SIZE"),  # MPICH's Hydra
)
# what identifies one launch of a job on every rank (with a world of more than one)
_JOB_IDS = (
    ("torchelastic", ("TORCHELASTIC_RUN_ID",)),
    ("slurm", ("SLURM_JOB_ID", "SLURM_STEP_ID")),
    ("pmix", ("PMIX_NAMESPACE",)),
    ("openmpi", ("OMPI_MCA_ess_base_jobid",)),
)


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "") if name else ""
    try:
        return int(value) if value.strip() else None
    except ValueError:
        return None


def rank_fields(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """This process's ``rank``, ``local_rank`` and ``world_size``, where a launcher
    says them (every record carries them)."""
    env = os.environ if env is None else env
    for rank, local, size in _RANKS:
        r = _int(env, rank)
        if r is None:
            continue
        out = {"rank": r}
        if (lr := _int(env, local)) is not None:
            out["local_rank"] = lr
        if (ws := _int(env, size)) is not None:
            out["world_size"] = ws
        return out
    return {}


@dataclass(frozen=True)
class Joining:
    """The task this process reports into, when it shares one."""

    task_id: str
    parent: dict[str, Any] | None  # the task record a parent process exported
    leader: bool  # this process announces the task and closes it


def joining(project: str, name: str, env: Mapping[str, str] | None = None) -> Joining | None:
    """The task to join, or None for a new one."""
    env = os.environ if env is None else env
    exported = env.get(ENV_TASK)
    if exported:
        try:
            rec = json.loads(exported)
        except ValueError:
            rec = None
        if isinstance(rec, dict) and rec.get("pid") != os.getpid() and "task_id" in rec:
            return Joining(str(rec["task_id"]), rec, leader=False)
    ranks = rank_fields(env)
    leader = ranks.get("rank", 0) == 0
    if env.get(ENV_TASK_ID):
        given = env[ENV_TASK_ID].strip().lower()
        if len(given) == 32 and all(c in "0123456789abcdef" for c in given):
            return Joining(given, None, leader)
        return Joining(_derive("user", (given,), project, name), None, leader)
    if ranks.get("world_size", 1) <= 1:
        return None  # one process: a task of its own
    for kind, names in _JOB_IDS:
        values = tuple(env.get(n, "") for n in names)
        if all(values) and values[0] != "none":  # torchrun's default rendezvous id
            return Joining(_derive(kind, values, project, name), None, leader)
    return None


def _derive(kind: str, values: tuple[str, ...], project: str, name: str) -> str:
    """The same id on every rank: from the launch, the user, project and task name."""
    key = "\0".join(("artisync-job", str(os.getuid()), kind, *values, project, name))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def export(record: Mapping[str, Any]) -> None:
    """Let the processes this one starts join its task (its whole record: a joining
    process may have to record the task's failure)."""
    os.environ[ENV_TASK] = json.dumps(dict(record), separators=(",", ":"), default=str)


def forget(task_id: str) -> None:
    """The exported task is closed: stop offering it."""
    exported = os.environ.get(ENV_TASK, "")
    if f'"task_id":"{task_id}"' in exported:
        del os.environ[ENV_TASK]
