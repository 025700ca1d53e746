"""Geometry of representations: intrinsic dimension (work in progress for issue 6)."""
