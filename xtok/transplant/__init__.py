"""Tokenizer transplant: give a student model a teacher's vocabulary, training-free."""
