"""PRISM speculative decoding for SGLang: per-step draft modules, training, serving, benchmarks."""

__version__ = "0.1.0"
