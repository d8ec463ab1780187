"""Benchmarks of synthesis: phantom speed, conditional-VAE quality, tumour-insertion fidelity and realism; contact
sheets."""
