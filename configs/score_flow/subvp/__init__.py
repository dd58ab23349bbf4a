"""score_flow's configs for the subvp SDE."""
