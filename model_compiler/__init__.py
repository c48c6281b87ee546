"""Builds signed, quantized, pruned model bundles for every edge runtime."""

__version__ = "0.1.0"
