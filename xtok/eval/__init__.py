"""Evaluation: bits per byte, compression, digit-split diagnostics, reports."""
