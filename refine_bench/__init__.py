"""refine-bench: train and evaluate fast-weight language models with base, SFT and REFINE arms."""

__version__ = "0.1.0"
