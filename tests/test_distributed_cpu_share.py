"""Ranks that share a node share its cores (nnx.distributed.cpu_share)."""
import pytest

from nnx.backend import cpu_parallel
from nnx.distributed.cpu_share import share_cpus


@pytest.fixture
def blas_restored():
    """Put BLAS's thread counts back after the test (share_cpus lowers them)."""
    libs = cpu_parallel._blas_controllers()
    if not libs:
        pytest.skip("no BLAS controller (threadpoolctl not installed)")
    saved = [c.get_num_threads() for c in libs]
    yield libs
    for c, n in zip(libs, saved):
        c.set_num_threads(n)


def test_two_ranks_on_four_cpus_take_two_threads_each(monkeypatch, blas_restored):
    monkeypatch.delenv("NNX_NUM_THREADS", raising=False)
    for c in blas_restored:
        c.set_num_threads(4)
    assert share_cpus(2, cpus=4) == 2
    assert cpu_parallel.num_threads() == 2                  # nnx's pool reads the variable
    assert all(c.get_num_threads() <= 2 for c in blas_restored)


def test_more_ranks_than_cpus_still_get_one_thread(monkeypatch, blas_restored):
    monkeypatch.delenv("NNX_NUM_THREADS", raising=False)
    assert share_cpus(3, cpus=2) == 1
    assert all(c.get_num_threads() == 1 for c in blas_restored)


def test_the_users_thread_count_is_kept_and_a_lone_rank_left_alone(monkeypatch, blas_restored):
    monkeypatch.setenv("NNX_NUM_THREADS", "3")
    for c in blas_restored:
        c.set_num_threads(8)
    assert share_cpus(2, cpus=8) == 3                      # kept, and it caps BLAS too
    assert all(c.get_num_threads() == 3 for c in blas_restored)
    monkeypatch.delenv("NNX_NUM_THREADS")
    before = [c.get_num_threads() for c in blas_restored]
    assert share_cpus(1, cpus=8) == cpu_parallel.num_threads()
    assert "NNX_NUM_THREADS" not in __import__("os").environ
    assert [c.get_num_threads() for c in blas_restored] == before
