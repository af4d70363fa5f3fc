"""Plan: which chains this rank runs, who writes and who aggregates, built once from the runtime.

A chain's trajectory depends only on (init_seed, chain index); the plan only decides where it runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from distinterp.errors import PlanError as PlanError  # re-exported: its old home
from distinterp.parallel.distributed import Runtime

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


_MESHES: dict[tuple[object, ...], DeviceMesh] = {}  # one mesh (and its process groups) per layout


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
    fsdp_size: int = 1  # ranks that share (shard) one chain
    chains_per_batch: int = 1  # chains a rank advances together, batched

    @classmethod
    def build(
        cls,
        runtime: Runtime,
        num_chains: int,
        chains: Sequence[int] | None = None,
        fsdp_size: int = 1,
        chains_per_batch: int = 1,
    ) -> Plan:
        for name, value in (("fsdp_size", fsdp_size), ("chains_per_batch", chains_per_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PlanError(f"{name}: expected an int >= 1, got {value!r}")
        if fsdp_size > runtime.world_size or runtime.world_size % fsdp_size:
            raise PlanError(
                f"fsdp_size={fsdp_size} must divide the world size {runtime.world_size} "
                f"(chain groups x fsdp_size = world size); launch a multiple of {fsdp_size} ranks "
                f"or pick an fsdp_size that divides {runtime.world_size}"
            )
        if fsdp_size > 1 and chains_per_batch > 1:
            raise PlanError(
                f"fsdp_size={fsdp_size} with chains_per_batch={chains_per_batch}: a sharded chain runs one "
                "at a time; set one of them to 1"
            )
        return cls(
            runtime=runtime,
            chains=normalize_chains(chains, num_chains),
            fsdp_size=fsdp_size,
            chains_per_batch=chains_per_batch,
        )

    @property
    def way(self) -> Literal["serial", "batched", "sharded"]:
        """How this rank runs its chains: one at a time, K batched on its device, or FSDP-sharded."""
        if self.fsdp_size > 1:
            return "sharded"
        return "batched" if self.chains_per_batch > 1 else "serial"

    def groups(self, todo: Sequence[int], start: Mapping[int, int]) -> list[tuple[int, ...]]:
        """This rank's chains in the groups that advance together: up to chains_per_batch chains that
        start at the same step (a resumed chain continues from its checkpoint), in chain order."""
        by_start: dict[int, list[int]] = {}
        for c in sorted(todo):
            by_start.setdefault(start.get(c, 0), []).append(c)
        k = self.chains_per_batch
        return [tuple(cs[i : i + k]) for _, cs in sorted(by_start.items()) for i in range(0, len(cs), k)]

    def device_mesh(self, device_type: str) -> DeviceMesh:
        """The job's 2-D DeviceMesh, axes ("chain", "fsdp"): row g holds chain group g's fsdp_size ranks.
        Collective on first use; later sample() calls in the same process group reuse it."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        shape = (self.num_chain_groups, self.fsdp_size)
        key = (device_type, shape, id(dist.group.WORLD))
        if key not in _MESHES:
            _MESHES[key] = init_device_mesh(device_type, shape, mesh_dim_names=("chain", "fsdp"))
        return _MESHES[key]

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

    @property
    def shard(self) -> tuple[int, int] | None:
        """(this rank's place in its chain group, fsdp_size) when chains are sharded, else None."""
        return (self.runtime.rank % self.fsdp_size, self.fsdp_size) if self.fsdp_size > 1 else None

    def chains_of_group(self, group: int) -> tuple[int, ...]:
        """Round-robin: chain chains[i] runs in group i % num_chain_groups."""
        return self.chains[group :: self.num_chain_groups]

    @property
    def my_chains(self) -> tuple[int, ...]:
        return self.chains_of_group(self.chain_group)
