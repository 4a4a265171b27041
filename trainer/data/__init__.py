"""Data loading for the training engine: batch samplers."""
