"""The Sekisho demo: IT provisions a laptop, field workers log on offline (``make demo``)."""
