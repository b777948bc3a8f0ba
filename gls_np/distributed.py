"""The communicator: who this process is among R ranks, and the few collectives training needs.

``world()`` returns an ``MPIComm`` when the process was launched by ``mpiexec -n R`` with R > 1
and a ``SingleProcess`` otherwise; both have the same interface, so the training loop is written
once and a single process simply runs every collective as the identity:

- ``rank``, ``size``, ``local_rank``, ``local_size`` (ranks on this node: GPU binding, threads);
- ``shard(n)`` -> the slice of n items this rank owns (contiguous, in rank order, sizes differ
  by at most one), so concatenating every rank's shard in rank order gives the items in order;
- ``allreduce(a)`` -> the elementwise sum over ranks, in float64 on the host;
- ``gather_shards(a, n)`` -> the n rows whose ``shard(n)`` rows each rank holds, on every rank;
- ``gather_rows(rows)`` -> every rank's list concatenated in rank order, on rank 0 (else None);
- ``allgather(obj)``, ``bcast(obj)``, ``barrier()``, ``abort(code)``;
- ``check_same(a, what)`` -> raise if the ranks hold different arrays;
- ``bytes_sent``: payload bytes this rank has handed to collectives (0 for one process).

mpi4py is imported here only, and only when R > 1. Arrays may live on a GPU: they are copied to
the host before any MPI call (``to_host`` synchronises CuPy's stream), so no CUDA-aware MPI is
needed. ``docs/mpi.md`` explains how training uses these and what each mode costs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys

from .backend import default_xp, np, set_device, to_host


def shard_slice(n: int, parts: int, index: int) -> slice:
    """Part ``index`` of ``parts`` contiguous parts of range(n); the first n % parts get one more.

    Shapes: -> slice of length n // parts or n // parts + 1 (numpy's ``array_split`` rule).
    """
    if not 0 <= index < parts:
        raise ValueError(f"expected a part index in [0, {parts}), got {index}")
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def _world_size_from_env() -> int:
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


@functools.cache
def world():
    """Return this process's communicator: ``MPIComm`` under mpiexec with R > 1, else one rank."""
    return MPIComm() if _world_size_from_env() > 1 else SingleProcess()


class SingleProcess:
    """One rank: every collective is the identity, and nothing is sent."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    def __init__(self):
        self.bytes_sent = 0

    def shard(self, n: int) -> slice:
        """Return the slice of n items this rank owns (all of them)."""
        return shard_slice(n, self.size, self.rank)

    def allreduce(self, a) -> np.ndarray:
        """Sum over ranks, as a float64 host array.  Shapes: a (*s) -> (*s)."""
        return np.array(to_host(a), dtype=np.float64)

    def gather_shards(self, a, n: int) -> np.ndarray:
        """Return the n rows of which this rank holds ``shard(n)``.  Shapes: (m, *s) -> (n, *s)."""
        a = to_host(a)
        if a.shape[0] != n:
            raise ValueError(f"expected this rank's {n} rows, got {a.shape[0]}")
        return np.array(a)

    def gather_rows(self, rows: list, root: int = 0) -> list | None:
        """Every rank's ``rows`` concatenated in rank order, on ``root``; None on the others."""
        return list(rows)

    def allgather(self, obj) -> list:
        """Every rank's ``obj`` (any picklable value), in rank order, on every rank."""
        return [obj]

    def bcast(self, obj, root: int = 0):
        """``root``'s ``obj`` on every rank."""
        return obj

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def abort(self, code: int = 1) -> None:
        """End every rank now with exit status ``code``."""
        os._exit(code)

    def check_same(self, a, what: str) -> None:
        """Raise RuntimeError if the ranks hold different values of ``a`` (bitwise)."""
        digests = self.allgather(hashlib.sha256(np.ascontiguousarray(to_host(a))).hexdigest())
        if len(set(digests)) > 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise RuntimeError(f"{what} differs between rank 0 and rank(s) {differ}")


class MPIComm(SingleProcess):
    """MPI_COMM_WORLD through mpi4py (imported here, when the first one is made)."""

    def __init__(self):
        from mpi4py import MPI

        super().__init__()
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    def allreduce(self, a) -> np.ndarray:
        """Sum over ranks (MPI_Allreduce), as a float64 host array.  Shapes: a (*s) -> (*s)."""
        send = np.ascontiguousarray(to_host(a), dtype=np.float64)
        out = np.empty_like(send)
        self._comm.Allreduce(send, out, op=self._MPI.SUM)
        self.bytes_sent += send.nbytes
        return out

    def gather_shards(self, a, n: int) -> np.ndarray:
        """Return the n rows of which each rank holds its ``shard(n)`` (MPI_Allgatherv)."""
        send = np.ascontiguousarray(to_host(a))
        own = self.shard(n)
        if send.shape[0] != own.stop - own.start:
            raise ValueError(
                f"expected this rank's {own.stop - own.start} of {n} rows, got {send.shape[0]}"
            )
        row = int(np.prod(send.shape[1:], dtype=np.int64))
        parts = (shard_slice(n, self.size, r) for r in range(self.size))
        counts = [(s.stop - s.start) * row for s in parts]
        out = np.empty((n, *send.shape[1:]), dtype=send.dtype)
        self._comm.Allgatherv(send, [out, counts])
        self.bytes_sent += send.nbytes
        return out

    def gather_rows(self, rows: list, root: int = 0) -> list | None:
        """Every rank's ``rows`` concatenated in rank order, on ``root``; None on the others."""
        parts = self._comm.gather(list(rows), root=root)
        return None if parts is None else [r for part in parts for r in part]

    def allgather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        return self._comm.allgather(obj)

    def bcast(self, obj, root: int = 0):
        """``root``'s ``obj`` on every rank."""
        return self._comm.bcast(obj, root=root)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        self._comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort) with exit status ``code``."""
        self._comm.Abort(code)


def abort_all(comm, prog: str, exc: BaseException) -> None:
    """Print ``prog: error: rank r: Type: first line`` and end every rank of the job (exit 2).

    For an exception on one rank only: the other ranks may wait in a collective for it,
    so the job is ended rather than left hanging.
    """
    msg = str(exc).splitlines()[0] if str(exc) else ""
    print(
        f"{prog}: error: rank {comm.rank}: {type(exc).__name__}: {msg}",
        file=sys.stderr,
        flush=True,
    )
    comm.abort(2)


class SharedDraws:
    """A stand-in for a numpy Generator that hands this rank its rows of a whole batch's draws.

    Every rank holds the same generator (same seed); each draw is made for all ``total`` rows
    of the batch and only ``rows`` are returned. So the random numbers of sample b (e.g. PGD's
    random start) are the same however the batch is split over ranks, and with rows = all of
    them it is the plain generator. NOTE: a draw's first axis must be the batch (PGD draws
    ``rng.random(x.shape)``).
    """

    def __init__(self, rng: np.random.Generator, rows: slice, total: int):
        self.rng, self.rows, self.total = rng, rows, total

    def _full(self, size) -> tuple:
        size = tuple(np.atleast_1d(size))
        if size[0] != self.rows.stop - self.rows.start:
            raise ValueError(
                f"expected a draw of this rank's {self.rows.stop - self.rows.start} rows "
                f"first, got size {size}"
            )
        return (self.total, *size[1:])

    def random(self, size, dtype=np.float64):
        """``Generator.random`` for the whole batch, this rank's rows."""
        return self.rng.random(self._full(size), dtype=dtype)[self.rows]

    def standard_normal(self, size, dtype=np.float64):
        """``Generator.standard_normal`` for the whole batch, this rank's rows."""
        return self.rng.standard_normal(self._full(size), dtype=dtype)[self.rows]


def bind_gpu(comm) -> int:
    """Select GPU ``local_rank mod n_gpus`` for this rank's CuPy arrays; return its id.

    Ranks on one node take the node's GPUs round robin, so R = n_gpus gives one GPU each.
    """
    set_device("gpu")
    cupy = default_xp()
    n = cupy.cuda.runtime.getDeviceCount()
    if n < 1:
        raise RuntimeError("--device gpu: CuPy sees no CUDA device")
    gpu = comm.local_rank % n
    cupy.cuda.Device(gpu).use()
    return gpu
