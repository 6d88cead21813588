"""Vocabularies: byte-canonical token strings, special-token roles, shared-token maps."""
