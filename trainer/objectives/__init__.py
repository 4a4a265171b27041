"""Losses: compression (kl, nll, rc) and contrastive."""
