"""Thin command-line mains; the only place that turns errors into exit codes."""
