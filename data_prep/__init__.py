"""Offline stage of llm2comp: read corpora, tokenize, write Arrow shards and a manifest.

Nothing here imports ``trainer``; the trainer imports the schemas and manifests from here.
"""

__version__ = "0.1.0"
