"""Evaluation of encoders: STS (Spearman of cosine similarity)."""
