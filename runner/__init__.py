"""itwin-run: a containerised workflow runner for AI/ML digital twins."""

__version__ = "0.1.0"
