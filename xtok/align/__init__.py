"""TokAlign: co-occurrence embeddings of two tokenizers' ids and a one-to-one target-to-source token map."""
