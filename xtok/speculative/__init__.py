"""Speculative-decoding drafter checks: acceptance, speed-up and losslessness."""
