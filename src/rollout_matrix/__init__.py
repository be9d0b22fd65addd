"""rollout-matrix: build, tag, push, pull and test one Docker image per supported engine release."""

from rollout_matrix.errors import UserError
from rollout_matrix.matrix import Entry, Matrix, load_matrix

__all__ = ["Entry", "Matrix", "UserError", "load_matrix"]
