"""The memory budget: explicit, or picked from free memory and shared by a node's ranks."""

import pytest

from gls_np import memory


def test_an_explicit_budget_is_taken_as_given():
    assert memory.memory_budget(4.0, ranks_per_node=8, free_bytes=1) == 4_000_000_000
    assert memory.budget_gb(1e-7) == 1e-7


def test_the_automatic_budget_is_a_fraction_of_free_memory_per_rank():
    free = 40e9
    assert memory.memory_budget(0, free_bytes=free) == int(memory.FREE_FRACTION * free)
    assert memory.memory_budget(0, 4, free_bytes=free) == int(memory.FREE_FRACTION * free / 4)
    assert memory.memory_budget(0, free_bytes=0) == int(memory.FLOOR_GB * 1e9)
    assert memory.memory_budget(0, free_bytes=1e15) == int(memory.CEILING_GB * 1e9)
    picks = [memory.memory_budget(0, free_bytes=f) for f in (0, 1e9, 4e9, 1e11, 1e12, 1e15)]
    assert picks == sorted(picks)


def test_budget_gb_takes_rank_0s_pick_on_every_rank(monkeypatch):
    monkeypatch.setattr(memory, "free_memory_bytes", lambda: 8e9)

    class Rank:
        local_size = 2

        def __init__(self, rank):
            self.rank = rank

        def bcast(self, obj):
            return 2.0 if self.rank else obj  # rank 0's value, as MPI's bcast gives it

    assert memory.budget_gb(0) == 4.0
    assert memory.budget_gb(0, Rank(0)) == 2.0 and memory.budget_gb(0, Rank(1)) == 2.0
    assert memory.budget_gb(3.0, Rank(1)) == 3.0


def test_bad_budgets():
    with pytest.raises(ValueError, match="max_memory_gb must be >= 0"):
        memory.memory_budget(-1.0)
    with pytest.raises(ValueError, match="ranks_per_node must be >= 1"):
        memory.memory_budget(0, ranks_per_node=0, free_bytes=1e9)
