"""score_flow's configs for the vp SDE."""
