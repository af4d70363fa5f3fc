"""devinterp.slt.config: SamplerConfig and the sampling-method table (distinterp.config, distinterp.optim)."""

from distinterp.config import EpochMode, SamplerConfig, SamplingMethodLiteral
from distinterp.optim import SGMCMC

SAMPLING_METHODS = {"sgmcmc_sgld": SGMCMC.sgld, "rmsprop_sgld": SGMCMC.rmsprop_sgld}
"""sampling_method name -> the optimizer factory that steps with it."""

__all__ = ["SAMPLING_METHODS", "EpochMode", "SamplerConfig", "SamplingMethodLiteral"]
