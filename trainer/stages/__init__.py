"""Stages: each a Task for the one engine (trainer/engine/loop.py)."""
