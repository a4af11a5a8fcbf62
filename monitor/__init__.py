"""Sentinel Monitor: refusal probabilities from sentinel tokens, per exchange and per user."""

__version__ = "0.1.0"
