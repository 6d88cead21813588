"""Pure distillation losses (one registry: xtok.registry.LOSSES)."""
