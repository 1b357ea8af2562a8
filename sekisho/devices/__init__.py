"""Devices Sekisho can talk to, and software stand-ins for tests and the demo."""
