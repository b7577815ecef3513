"""The version, in one place: the package root, its metadata and every run record read it here."""

__version__ = "0.2.0"
