import os
import time
from pathlib import Path

import torch

from model.parallel import run_side_by_side, take_free_cores


def test_free_cores_are_taken_only_once_the_flag_is_raised(tmp_path):
    flag, threads = tmp_path / "cores-free", torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        take_free_cores(flag)
        assert torch.get_num_threads() == 1
        flag.touch()
        take_free_cores(flag)
        assert torch.get_num_threads() == (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(threads)


def wait_for(path: str, timeout: float = 60.0) -> bool:
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.02)
    return os.path.exists(path)


def threads_before_and_after_the_flag(flag: str, started: str) -> tuple[int, int]:
    """A job's threads when it starts (then it says so in ``started``) and once the flag is raised."""
    take_free_cores(flag)
    before = torch.get_num_threads()
    Path(started).touch()
    wait_for(flag)
    take_free_cores(flag)
    return before, torch.get_num_threads()


def test_side_by_side_jobs_hand_over_their_cores(tmp_path):
    flag, started = tmp_path / "cores-free", tmp_path / "started"
    flag.touch()  # left over from an earlier run: must not count
    tasks = [(wait_for, str(started)), (threads_before_and_after_the_flag, str(flag), str(started))]
    _, (before, after) = run_side_by_side(tasks, 2, flag)
    cores = os.cpu_count() or 1
    assert before == max(1, cores // 2) and after == cores


def test_cores_are_handed_over_only_when_no_task_waits(tmp_path):
    flag, started = tmp_path / "cores-free", tmp_path / "started"
    # The first job ends at once and the third starts in its place, beside the second: no core is idle yet,
    # so the third starts with one thread; the second ends once the third has started, leaving it alone.
    tasks = [(time.sleep, 0), (wait_for, str(started)), (threads_before_and_after_the_flag, str(flag), str(started))]
    *_, (before, after) = run_side_by_side(tasks, 2, flag)
    cores = os.cpu_count() or 1
    assert before == max(1, cores // 2) and after == cores
