"""The static graph IR: op registry (`ops.py`), spec and weight validation (`check.py`), `StaticModel` (`model.py`)
and its compiled eager schedule (`schedule.py`)."""

from .check import check_spec, check_weights, spec_shapes
from .model import StaticModel, build_static, static_nodes, validate_spec
from .ops import INPUT, OPS, OpRule

__all__ = ["INPUT", "OPS", "OpRule", "StaticModel", "build_static", "check_spec", "check_weights", "spec_shapes",
           "static_nodes", "validate_spec"]
