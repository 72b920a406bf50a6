"""lenet-sweep's Optuna sweeper for Hydra: ``hydra/sweeper=optuna`` (docs/search.md)."""
