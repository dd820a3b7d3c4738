"""The ``elfkit`` command line (typer + rich)."""
