"""lenet-sweep's grid sweeper for Hydra, the default: ``hydra/sweeper=grid`` (the basic sweeper, composing less)."""
