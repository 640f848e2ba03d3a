"""Independent jobs side by side on a small CPU machine, one thread each, handing their cores over.

Small models use two cores poorly (one thread per process gets 60-70 % of two threads' speed), so two
jobs run in two processes. Once a core has nothing left to do, a flag file is raised; the jobs still
running check the flag between steps (``take_free_cores``) and from then on use every core.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Optional

import torch


def take_free_cores(flag: Optional[str | os.PathLike]) -> None:
    """Use every core once ``flag`` exists (a core has nothing left to do). Cheap: call it between steps."""
    cores = os.cpu_count() or 1
    if flag is not None and torch.get_num_threads() < cores and Path(flag).exists():
        torch.set_num_threads(cores)


def run_side_by_side(tasks: list[tuple], jobs: int, cores_free: Optional[Path] = None) -> list:
    """Run ``(function, *args)`` tasks in ``jobs`` worker processes that share the cores evenly, or in this
    process, one after the other, when ``jobs`` is 1. ``cores_free`` (a path the tasks were given) is
    removed first and created once fewer tasks are left than workers (no task waits to start, so the
    running ones may take the idle cores). Returns the results in task order."""
    if cores_free is not None:
        Path(cores_free).unlink(missing_ok=True)
    if jobs <= 1 or len(tasks) <= 1:
        return [task[0](*task[1:]) for task in tasks]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(*task) for task in tasks]
        unfinished = set(futures)
        while cores_free is not None and len(unfinished) >= jobs:
            unfinished = wait(unfinished, return_when=FIRST_COMPLETED).not_done
        if cores_free is not None:
            Path(cores_free).touch()
        return [future.result() for future in futures]
