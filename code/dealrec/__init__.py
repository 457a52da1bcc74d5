"""DEALRec: data-efficient fine-tuning for LLM-based recommendation (Lin et al., SIGIR 2024)."""

__version__ = "0.1.0"
