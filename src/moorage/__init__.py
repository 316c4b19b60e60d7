"""moorage: a crash-safe, per-group work queue for chat agents in containers."""

__version__ = "0.1.0"
