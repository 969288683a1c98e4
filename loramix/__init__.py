"""loramix: compose skills in language models by merging LoRA adapters."""

__version__ = "0.1.0"
