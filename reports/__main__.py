"""CLI: `python -m reports RUNS_DIR --out DIR` writes the leaderboard (Markdown, CSV, HTML, figures)."""
from __future__ import annotations

import argparse
import sys

from .aggregate import PROFILES, parse_profile
from .render import write_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    ap.add_argument("runs_dir", help="folder holding run directories (e.g. runs/leaderboard_synthetic)")
    ap.add_argument("--out", default=None, help="output folder (default: RUNS_DIR/report)")
    ap.add_argument("--profile", action="append", default=[], metavar="NAME=fidelity:W,utility:W,privacy:W",
                    help="add or replace a use-case weight profile (repeatable); built in: " + ", ".join(PROFILES))
    ap.add_argument("--no-figures", action="store_true", help="tables only (skips loading the datasets)")
    args = ap.parse_args(argv)
    profiles = dict(PROFILES)
    try:
        profiles.update(parse_profile(p) for p in args.profile)
        paths = write_report(args.runs_dir, args.out or f"{args.runs_dir.rstrip('/')}/report", profiles,
                             figures=not args.no_figures)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for kind, p in paths.items():
        print(f"{kind:>8}: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
