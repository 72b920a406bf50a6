"""Many small jobs trained as one batched model: ``hydra/launcher=packed``'s training core.

``networks`` stacks M same-shape networks into one (grouped convolutions,
batched matrix products), ``optim`` steps all of them at once with per-member
hyperparameters, ``trainer`` runs ``train.fit``'s epochs for the pack with one
random stream per member, ``cuda_graph`` captures the pack's step on a GPU.
"""
