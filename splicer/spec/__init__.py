"""The spec language and its loader."""

from splicer.spec.loader import load_spec, spec_from_dict
from splicer.spec.schema import DataSpec, DistillSpec, LossSpec, NetworkSpec, Spec, TrainSpec, TransformSpec

__all__ = ["DataSpec", "DistillSpec", "LossSpec", "NetworkSpec", "Spec", "TrainSpec", "TransformSpec", "load_spec", "spec_from_dict"]
