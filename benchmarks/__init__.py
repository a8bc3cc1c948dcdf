"""Benchmarks of the codec: speed, bitrate and quality (each one a ``python -m`` module)."""
