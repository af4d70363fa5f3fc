"""Plan: chain sharding over ranks and array tasks covers every chain exactly once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distinterp.parallel.distributed import Runtime
from distinterp.parallel.plan import Plan, PlanError, array_task_chains


@given(num_chains=st.integers(1, 40), world=st.integers(1, 9))
def test_ranks_partition_the_chains(num_chains: int, world: int) -> None:
    owned = [c for r in range(world) for c in Plan.build(Runtime(r, world), num_chains).my_chains]
    assert sorted(owned) == list(range(num_chains))


@given(num_chains=st.integers(1, 40), tasks=st.integers(1, 12))
def test_array_tasks_partition_the_chains(num_chains: int, tasks: int) -> None:
    blocks = [array_task_chains(num_chains, t, tasks) for t in range(tasks)]
    assert [c for b in blocks for c in b] == list(range(num_chains))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_fsdp_layout_and_errors() -> None:
    plan = Plan.build(Runtime(3, 4), 6, fsdp_size=2)
    assert (plan.num_chain_groups, plan.chain_group, plan.is_writer, plan.my_chains) == (
        2,
        1,
        False,
        (1, 3, 5),
    )
    with pytest.raises(PlanError, match="fsdp_size=3 must divide the world size 4"):
        Plan.build(Runtime(0, 4), 6, fsdp_size=3)
    with pytest.raises(PlanError, match="repeated"):
        Plan.build(Runtime(), 6, chains=[1, 1])
    with pytest.raises(PlanError, match="outside"):
        Plan.build(Runtime(), 6, chains=[6])


def test_a_temp_store_is_refused_when_ranks_span_nodes() -> None:
    """Without output_path, rank 0's temp directory would be invisible to another node's ranks."""
    from distinterp.config import SamplerConfig
    from distinterp.sampling import _location

    assert Runtime(0, 4, 0, 2).spans_nodes and not Runtime(0, 2, 0, 2).spans_nodes
    cfg = SamplerConfig(lr=1e-3, n_beta=10.0, num_chains=2, num_draws=2, batch_size=1)
    with pytest.raises(ValueError, match="output_path: required when the ranks span several nodes"):
        _location(None, None, cfg, Runtime(0, 4, 0, 2))


def test_the_plan_picks_one_way_and_groups_chains_by_start_step() -> None:
    assert Plan.build(Runtime(), 4).way == "serial"
    assert Plan.build(Runtime(), 4, chains_per_batch=3).way == "batched"
    assert Plan.build(Runtime(0, 2), 4, fsdp_size=2).way == "sharded"
    plan = Plan.build(Runtime(), 8, chains_per_batch=3)
    # chains 2 and 5 resume from step 50: they advance together, apart from the fresh ones
    assert plan.groups([0, 1, 2, 3, 4, 5, 6], {2: 50, 5: 50}) == [(0, 1, 3), (4, 6), (2, 5)]
    assert Plan.build(Runtime(), 3).groups([2, 0], {}) == [(0,), (2,)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fsdp_size": 0}, "fsdp_size: expected an int >= 1"),
        ({"chains_per_batch": 1.5}, "chains_per_batch: expected an int >= 1"),
        ({"fsdp_size": 4}, r"fsdp_size=4 must divide the world size 2 .* launch a multiple of 4"),
        ({"fsdp_size": 2, "chains_per_batch": 2}, "a sharded chain runs one at a time"),
    ],
)
def test_bad_layouts_name_both_numbers(kwargs: dict, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        Plan.build(Runtime(0, 2), 4, **kwargs)
