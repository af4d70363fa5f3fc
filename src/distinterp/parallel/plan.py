"""Plan: which chains this rank runs, who writes and who aggregates, built once from the runtime.

A chain's trajectory depends only on (init_seed, chain index); the plan only decides where it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distinterp.parallel.distributed import Runtime


class PlanError(ValueError):
    """The requested chains or parallel layout do not fit the job."""


def normalize_chains(chains: Sequence[int] | None, num_chains: int) -> tuple[int, ...]:
    """Validate `chains` (indices this call runs) against num_chains; None means all of them."""
    if chains is None:
        return tuple(range(num_chains))
    if isinstance(chains, (str, bytes)) or not hasattr(chains, "__iter__"):
        raise PlanError(f"chains: expected a sequence of chain indices, got {type(chains).__name__}")
    out = []
    for c in chains:
        if isinstance(c, bool) or not isinstance(c, int):
            raise PlanError(f"chains: indices must be ints, got {c!r}")
        if not 0 <= c < num_chains:
            raise PlanError(f"chains: index {c} is outside [0, num_chains={num_chains})")
        out.append(c)
    if len(set(out)) != len(out):
        raise PlanError(f"chains: has repeated indices {sorted(out)}")
    if not out:
        raise PlanError("chains: is empty; pass None to run every chain")
    return tuple(sorted(out))


def array_task_chains(num_chains: int, task_id: int, task_count: int) -> tuple[int, ...]:
    """The contiguous block of chains that array task `task_id` of `task_count` runs (may be empty)."""
    if task_count < 1 or not 0 <= task_id < task_count:
        raise PlanError(f"array task {task_id} of {task_count}: need 0 <= task_id < task_count")
    base, extra = divmod(num_chains, task_count)
    start = task_id * base + min(task_id, extra)
    return tuple(range(start, start + base + (1 if task_id < extra else 0)))


@dataclass(frozen=True)
class Plan:
    """The 2-D layout (chain groups x model shards) of one sample() call and what this rank owns."""

    runtime: Runtime
    chains: tuple[int, ...]  # every chain this call runs, over all ranks
    fsdp_size: int = 1

    @classmethod
    def build(
        cls, runtime: Runtime, num_chains: int, chains: Sequence[int] | None = None, fsdp_size: int = 1
    ) -> Plan:
        if fsdp_size < 1 or runtime.world_size % fsdp_size:
            raise PlanError(
                f"fsdp_size={fsdp_size} must divide the world size {runtime.world_size} "
                f"(chain groups x fsdp_size = world size)"
            )
        return cls(runtime=runtime, chains=normalize_chains(chains, num_chains), fsdp_size=fsdp_size)

    @property
    def num_chain_groups(self) -> int:
        return self.runtime.world_size // self.fsdp_size

    @property
    def chain_group(self) -> int:
        return self.runtime.rank // self.fsdp_size

    @property
    def is_writer(self) -> bool:
        """The first rank of each chain group writes that group's chains."""
        return self.runtime.rank % self.fsdp_size == 0

    @property
    def is_coordinator(self) -> bool:
        return self.runtime.is_coordinator

    def chains_of_group(self, group: int) -> tuple[int, ...]:
        """Round-robin: chain chains[i] runs in group i % num_chain_groups."""
        return self.chains[group :: self.num_chain_groups]

    @property
    def my_chains(self) -> tuple[int, ...]:
        return self.chains_of_group(self.chain_group)
