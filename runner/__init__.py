"""Declarative, Hydra-driven benchmarks of LLM inference engines."""
