"""lenet-sweep's packed launcher for Hydra: ``hydra/launcher=packed`` trains same-shape jobs as one batched model."""
