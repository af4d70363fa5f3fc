"""devinterp 2.x's torch optimizers (`devinterp.optim`), stepping with distinterp.update.sgld_step."""

from distinterp.optim.sgld import SGLD
from distinterp.optim.sgmcmc import SGMCMC, SGNHT, Metrics, SamplingMethodLiteral, SGMCMCMethod

__all__ = ["SGLD", "SGMCMC", "SGNHT", "Metrics", "SGMCMCMethod", "SamplingMethodLiteral"]
