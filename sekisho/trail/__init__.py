"""The signed logon trail: append-only, hash-linked, forward-secure (docs/trail-format.md)."""

from sekisho.trail.format import EventType, Header, TrailEntry
from sekisho.trail.verify import Head, Reason, TrailSummary, read_file, verify_entries, verify_files
from sekisho.trail.writer import Trail, TrailKeys

__all__ = [
    "EventType",
    "Head",
    "Header",
    "Reason",
    "Trail",
    "TrailEntry",
    "TrailKeys",
    "TrailSummary",
    "read_file",
    "verify_entries",
    "verify_files",
]
