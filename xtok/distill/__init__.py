"""Token-level distillation on transformers' Trainer, with progressive stages."""
