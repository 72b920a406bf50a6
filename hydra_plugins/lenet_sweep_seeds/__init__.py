"""lenet-sweep's adaptive-seeds sweeper for Hydra: ``hydra/sweeper=seeds`` (docs/statistics.md)."""
