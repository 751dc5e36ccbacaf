"""Benchmarks: a backbone, tasks with train/val/test splits, a reference set, a control task, default configs."""

from deltamerge.suites.registry import SUITES, get_suite

__all__ = ["SUITES", "get_suite"]
