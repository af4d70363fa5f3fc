"""devinterp.slt.sampling: `sample()`, SGLD chains streamed to a zarr store (distinterp.sampling), and the
names devinterp's module exposes beside it."""

from distinterp.loss import compute_per_token_loss, is_transformer_lens_model
from distinterp.optim.sgmcmc import Metrics
from distinterp.sampling import ObservableSpec, sample
from distinterp.slt.config import SAMPLING_METHODS, SamplerConfig, SamplingMethodLiteral
from distinterp.slt.lm_loss import make_evaluate_fn
from distinterp.slt.observables import Observable
from distinterp.slt.sampler import calculate_num_steps, sample_single_chain, set_seed
from distinterp.slt.writing import ZarrWriter
from distinterp.slt.zarr_schema import DataArraySpec, ZarrSchema
from distinterp.store import LOSS_DTYPE as SAMPLES_LOSS_DTYPE_STR

ZARR_MAX_WRITE_THREADS = 4
"""devinterp's writer thread count (ZarrWriter's default); sample() writes through one writer thread."""

__all__ = [
    "SAMPLES_LOSS_DTYPE_STR",
    "SAMPLING_METHODS",
    "ZARR_MAX_WRITE_THREADS",
    "DataArraySpec",
    "Metrics",
    "Observable",
    "ObservableSpec",
    "SamplerConfig",
    "SamplingMethodLiteral",
    "ZarrSchema",
    "ZarrWriter",
    "calculate_num_steps",
    "compute_per_token_loss",
    "is_transformer_lens_model",
    "make_evaluate_fn",
    "sample",
    "sample_single_chain",
    "set_seed",
]
