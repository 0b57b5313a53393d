"""Training a Glow: the trainer (DDP, EMA, exact resume), checkpoints and the models read back from them, the
`train` command and learning curves. Import the submodules; this package imports none of them, so
`flow_model.training.checkpoint` (which the editor may use) never pulls in the trainer or torch.distributed."""
