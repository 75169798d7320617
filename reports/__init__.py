"""Reports: load run directories -> tidy DataFrames -> leaderboard tables, figures, Markdown/CSV/HTML."""
from .aggregate import PROFILES, Table, build_tables
from .load import RunSet, find_run_dirs, load_runs
from .ranking import rank_metric
from .render import write_report

__all__ = ["PROFILES", "RunSet", "Table", "build_tables", "find_run_dirs", "load_runs", "rank_metric", "write_report"]
