"""Factors: each takes its device and the user interaction injected, and yields secrets for slots."""
