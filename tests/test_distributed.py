"""The communicator in one process: sharding, identity collectives, shared per-sample draws.

The same code paths over real ranks are tested in tests/test_mpi.py (under mpiexec -n 2).
"""

import numpy as np
import pytest

from gls_np import distributed
from gls_np.distributed import SharedDraws, SingleProcess, shard_slice


@pytest.mark.parametrize("n", [0, 1, 5, 8, 13])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7])
def test_shards_tile_the_range_in_rank_order(n, parts):
    shards = [shard_slice(n, parts, r) for r in range(parts)]
    assert [i for s in shards for i in range(s.start, s.stop)] == list(range(n))
    sizes = [s.stop - s.start for s in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert sizes == [len(a) for a in np.array_split(np.arange(n), parts)]


def test_shard_index_out_of_range():
    with pytest.raises(ValueError, match=r"part index in \[0, 2\)"):
        shard_slice(4, 2, 2)


def test_one_process_collectives_are_the_identity():
    comm = SingleProcess()
    assert (comm.rank, comm.size, comm.local_rank, comm.local_size) == (0, 1, 0, 1)
    assert comm.shard(5) == slice(0, 5)
    a = np.arange(3, dtype=np.float32)
    total = comm.allreduce(a)
    assert total.dtype == np.float64 and np.array_equal(total, a)
    total[0] = 7  # a copy, never the caller's array
    assert a[0] == 0
    rows = np.ones((4, 2))
    np.testing.assert_array_equal(comm.gather_shards(rows, 4), rows)
    with pytest.raises(ValueError, match="expected this rank's 5 rows, got 4"):
        comm.gather_shards(rows, 5)
    assert comm.gather_rows([{"index": 0}]) == [{"index": 0}]
    assert comm.allgather("x") == ["x"] and comm.bcast(3) == 3
    comm.barrier()
    comm.check_same(a, "a")
    assert comm.bytes_sent == 0


def test_world_is_one_process_without_mpiexec(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    distributed.world.cache_clear()
    try:
        assert isinstance(distributed.world(), SingleProcess)
        assert distributed.world() is distributed.world()
    finally:
        distributed.world.cache_clear()


def test_shared_draws_give_each_row_the_numbers_of_the_whole_batch():
    whole = np.random.default_rng(7).random((10, 3, 2))
    parts = [shard_slice(10, 3, r) for r in range(3)]
    got = [
        SharedDraws(np.random.default_rng(7), s, 10).random((s.stop - s.start, 3, 2)) for s in parts
    ]
    np.testing.assert_array_equal(np.concatenate(got), whole)
    # all rows: the plain generator, draw after draw
    rng, plain = SharedDraws(np.random.default_rng(1), slice(0, 4), 4), np.random.default_rng(1)
    for _ in range(2):
        np.testing.assert_array_equal(rng.random((4, 2)), plain.random((4, 2)))
    np.testing.assert_array_equal(rng.standard_normal(4), plain.standard_normal(4))
    with pytest.raises(ValueError, match="this rank's 4 rows first"):
        rng.random((3, 2))


class _FakeCuda:
    """The two calls bind_gpu makes of cupy.cuda, recorded (no GPU on CI machines)."""

    def __init__(self, count):
        self.used = []
        outer = self

        class Runtime:
            @staticmethod
            def getDeviceCount():  # noqa: N802 (CuPy's name)
                return count

        class Device:
            def __init__(self, i):
                self.i = i

            def use(self):
                outer.used.append(self.i)

        self.runtime, self.Device = Runtime, Device


@pytest.mark.parametrize("local_rank,count,expected", [(0, 4, 0), (5, 4, 1), (3, 1, 0)])
def test_bind_gpu_takes_local_rank_mod_gpus(monkeypatch, local_rank, count, expected):
    import sys
    import types

    from gls_np import backend

    fake = types.ModuleType("cupy")
    fake.cuda = _FakeCuda(count)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(backend._state, "device", "cpu")
    comm = SingleProcess()
    monkeypatch.setattr(comm, "local_rank", local_rank, raising=False)
    assert distributed.bind_gpu(comm) == expected
    assert fake.cuda.used == [expected]
    fake.cuda = _FakeCuda(0)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        distributed.bind_gpu(comm)
