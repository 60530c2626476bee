"""Race helpers for tests: see core/storm.py (shared with race_demo and the benchmarks)."""

from core.storm import Outcome, run_concurrently, tally

__all__ = ["Outcome", "run_concurrently", "tally"]
