"""`redone mix search`: choose a data mixture by regression over proxy runs (RegMix, Liu et al. 2024).

The search samples candidate mixtures from a Dirichlet around the natural token shares, trains a small
proxy model on each through the normal training loop, fits a regressor from mixture shares to held-out
losses, simulates many unseen mixtures with it and averages the predicted top-k into the chosen mixture.

Modules
- ``units``: what the search weighs (config sources, or SNS-Bench task files) and their token counts;
  the one adapter onto the stage data modules.
- ``candidates``: Dirichlet sampling around the natural shares with per-unit bounds.
- ``proxies``: proxy configs, their cache keys, parallel worker processes, resume and results.
- ``regress``: ridge on log-shares, a small gradient-boosted tree ensemble (LightGBM when installed),
  K-fold cross-validated Spearman rank correlation.
- ``search``: the orchestration (objective, constraint, top-k choice, validation proxy).
- ``output``: the YAML fragment and override line, report.md, the plot.
- ``cli``: ``add_parser(subparsers)`` / ``run(args)`` for ``redone mix search``.

Submodules are not imported here: ``python -m redone.mix.proxies`` (the worker) stays a clean import.
"""
