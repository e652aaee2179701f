"""linehost: a line host that provisions Matter device credentials on many jigs at once."""

__version__ = "0.1.0"
