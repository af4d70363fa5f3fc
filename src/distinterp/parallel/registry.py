"""The engine registry: which ChainEngine class runs a plan's layout. Apart from the protocol
(parallel/engine.py), so the protocol imports no engine and nothing imports in a circle."""

from __future__ import annotations

from distinterp.parallel.batched import BatchedEngine
from distinterp.parallel.engine import EngineFactory
from distinterp.parallel.plan import Plan, PlanError
from distinterp.parallel.serial import SerialEngine
from distinterp.parallel.sharded import ShardedEngine


def engine_for(plan: Plan) -> EngineFactory:
    """The engine class the plan's layout calls for; asked once, before any work, so a layout that has
    no engine fails up front."""

    engines: dict[str, EngineFactory] = {
        "serial": SerialEngine,
        "batched": BatchedEngine,
        "sharded": ShardedEngine,
    }
    if plan.way not in engines:
        raise PlanError(
            f"fsdp_size={plan.fsdp_size}, chains_per_batch={plan.chains_per_batch}: running chains "
            f"{plan.way} is not built yet; use 1 for both"
        )
    return engines[plan.way]
