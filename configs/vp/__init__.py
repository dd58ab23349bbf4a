"""Leaf configs for the vp SDE."""
