import os
import time

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


def threads_once_flag_is_raised(flag: str, timeout: float = 60.0) -> tuple[int, int]:
    """(threads at start, threads after the flag appeared and take_free_cores ran)."""
    start = torch.get_num_threads()
    deadline = time.time() + timeout
    while not os.path.exists(flag) and time.time() < deadline:
        time.sleep(0.05)
    take_free_cores(flag)
    return start, torch.get_num_threads()


def test_side_by_side_jobs_hand_over_their_cores(tmp_path):
    flag = tmp_path / "cores-free"
    flag.touch()  # left over from an earlier run: must not count
    done, (start, after) = run_side_by_side([(time.sleep, 0.5), (threads_once_flag_is_raised, str(flag))], 2, flag)
    cores = os.cpu_count() or 1
    assert done is None and start == max(1, cores // 2) and after == cores
