"""The GPU kit: bench/gpu/README.md."""
