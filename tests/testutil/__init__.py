"""Shared test helpers: Hypothesis profiles, per-slot isolation, real-service URLs."""
