"""Leaf configs for the ve SDE."""
