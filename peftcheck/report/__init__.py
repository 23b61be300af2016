"""The HTML and Markdown report: a model built from results records and baselines, then rendered."""

from peftcheck.report.model import Report, build_report

__all__ = ["Report", "build_report"]
