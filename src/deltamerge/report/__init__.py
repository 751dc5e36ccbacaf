"""REPORT.md tables and matplotlib figures from a run's results.json."""

from deltamerge.report.markdown import write_report

__all__ = ["write_report"]
