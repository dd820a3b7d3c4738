"""The report: metrics tables, plots, multi-seed aggregation and ``report.md``."""
