"""llm2comp trainer: models, objectives, the training engine, export, encode and eval.

Importing this package does no work and pulls in no heavy dependency; modules import torch and
transformers themselves when they need them.
"""
