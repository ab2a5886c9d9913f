"""The package version; separate from the ring and protocol versions."""

__version__ = "0.1.0"
