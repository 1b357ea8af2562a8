"""Sekisho (関所): offline two-factor logon for field laptops on a closed-network SIM."""

__version__ = "0.1.0"
