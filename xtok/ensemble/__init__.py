"""Ensembles of models that share one vocabulary (after a transplant): mixed next-token distributions."""
