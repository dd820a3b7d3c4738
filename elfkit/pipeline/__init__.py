"""Stages of a run: prepare data → train → sample → evaluate → report."""
