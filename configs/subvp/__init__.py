"""Leaf configs for the subvp SDE."""
