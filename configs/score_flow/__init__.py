"""yang-song/score_flow's own configs (ScoreFlow, NeurIPS 2021) at their original relative
paths, values written out; the leaves configs/{vp,subvp}/*_{baseline,lw,lw_is}.py choose
the training weighting on top of them, as score_flow's command lines did."""
