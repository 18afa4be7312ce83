"""ingestd: receives school rosters and turns each day's roster into change events."""

__version__ = "0.1.0"
