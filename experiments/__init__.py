"""Experiments on the model library, with their reports beside the code: the Flow++ ablation (ablation.md) and the
64x64 pilots (pilots64.md). They import flow_model and flow_model.training; nothing imports them."""
