"""Geometry of representations: intrinsic dimension, diffusion maps, manifold-aware steering."""
