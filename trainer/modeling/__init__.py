"""The compressor: one copy of the base LLM serving as bidirectional encoder (LoRA on) and causal decoder (LoRA off)."""
