"""The memory budget of a run: how many bytes one loss evaluation or bound chunk may hold.

``--max-memory-gb`` above 0 is taken as given. At 0 (the default) the budget is picked
from the memory free when the run starts (the host's, or the GPU's under ``--device gpu``):

    budget = clip(FREE_FRACTION * free / ranks_per_node, FLOOR_GB, CEILING_GB)

The ranks on a node share its memory, hence the division. Only a fraction is taken
because the planners that spend the budget (``bounds.spec.plan_chunks``,
``objectives.population_chunk``) count the main arrays of a chunk, not every temporary,
and the data set, the parameters and the optimizer state live outside it. The floor
keeps chunks from shrinking to single rows where little memory is free (the planners
always take at least one row); past the ceiling chunks are so large that their GEMMs
gain nothing from growing.
"""

from __future__ import annotations

from .backend import free_memory_bytes

FREE_FRACTION = 0.5
FLOOR_GB = 0.25
CEILING_GB = 64.0


def memory_budget(max_memory_gb: float, ranks_per_node: int = 1, free_bytes=None) -> int:
    """Return the budget in bytes: ``max_memory_gb`` GB when > 0, else picked from free memory.

    Parameters
    ----------
    max_memory_gb : float
        An explicit budget in GB (1e9 bytes), or 0 for automatic.
    ranks_per_node : int
        Processes sharing this node's memory (``comm.local_size``).
    free_bytes : int, optional
        The free memory to pick from; default ``backend.free_memory_bytes()`` (of the
        selected device).

    Math: 0 -> clip(FREE_FRACTION * free_bytes / ranks_per_node, FLOOR_GB 1e9, CEILING_GB 1e9).
    """
    if max_memory_gb < 0:
        raise ValueError(f"max_memory_gb must be >= 0 (0 = automatic), got {max_memory_gb}")
    if ranks_per_node < 1:
        raise ValueError(f"ranks_per_node must be >= 1, got {ranks_per_node}")
    if max_memory_gb > 0:
        return int(max_memory_gb * 1e9)
    free = free_memory_bytes() if free_bytes is None else free_bytes
    share = FREE_FRACTION * free / ranks_per_node
    return int(min(max(share, FLOOR_GB * 1e9), CEILING_GB * 1e9))


def budget_gb(max_memory_gb: float, comm=None) -> float:
    """Return ``max_memory_gb`` when > 0, else the automatic budget in GB, rounded to 1 MB.

    The value an entry point resolves once, records, and passes on. Over ``comm``'s ranks
    (a ``gls_np.distributed`` communicator) rank 0 picks for its node's ``local_size``
    ranks and broadcasts its pick, so every rank chunks alike: then every rank must call
    this. Without ``comm`` the process picks for itself alone.
    """
    if max_memory_gb > 0:
        return float(max_memory_gb)
    if comm is None:
        return round(memory_budget(max_memory_gb) / 1e9, 3)
    pick = memory_budget(max_memory_gb, comm.local_size) if comm.rank == 0 else 0
    return comm.bcast(round(pick / 1e9, 3))
