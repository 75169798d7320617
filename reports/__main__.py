"""CLI: `python -m reports RUNS --out DIR [--archive]` writes the leaderboard (Markdown, CSV, HTML, figures)."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .aggregate import PROFILES, parse_profile
from .archive import ARCHIVE_NAME, is_archive, opened, pack, unpack
from .render import write_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    ap.add_argument("runs_dir", nargs="?", help="folder holding run directories (e.g. runs/leaderboard_synthetic), or a "
                                     f"{ARCHIVE_NAME} written by --archive (e.g. reports/leaderboard_synthetic/{ARCHIVE_NAME})")
    ap.add_argument("--out", default=None, help="output folder (default: RUNS_DIR/report; for an archive, rebuilt/ beside it)")
    ap.add_argument("--profile", action="append", default=[], metavar="NAME=fidelity:W,utility:W,privacy:W",
                    help="add or replace a use-case weight profile (repeatable); built in: " + ", ".join(PROFILES))
    ap.add_argument("--no-figures", action="store_true", help="tables only (skips loading the datasets)")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=PATH", help="where the scatter figures "
                    "reload dataset NAME from (repeatable); default: the path in benchmarks/data/NAME.yaml. A report "
                    "never downloads and never reads a path recorded in the runs")
    ap.add_argument("--archive", action="store_true", help=f"also write OUT/{ARCHIVE_NAME}: the runs' small files "
                    "(records, metric rows, curves, configs, thinned losses, one sample per cell), enough to rebuild "
                    "this report and, extracted into a runs folder, to resume the suite without its complete cells")
    ap.add_argument("--extract-to", default=None, metavar="DIR", help=f"extract the {ARCHIVE_NAME} given as RUNS "
                    "into DIR (never replacing a file there) and stop; the suite command then runs only missing cells")
    ap.add_argument("--calibration", action="append", default=[], metavar="VERDICT_CSV", help="a calibration "
                    "ladder's verdict.csv besides the committed reports/calibration/*/verdict.csv (repeatable): metrics "
                    "that failed it on a table's data config are shown there but not ranked")
    ap.add_argument("--calibrate", default=None, metavar="NAME", help="instead of a report: score every metric on the "
                    "calibration ladder of dataset NAME (its shipped config) or of suite NAME's data config (benchmarks/experiment/"
                    "NAME.yaml; --data DATASET=PATH for the files) and write "
                    "calibration.md/.csv and verdict.csv to --out (default reports/calibration/NAME), which later "
                    "reports read to keep metrics that fail it out of the ranks")
    ap.add_argument("--metrics", default="default", help="with --calibrate: the benchmarks/metrics/ config to score")
    ap.add_argument("--rejudge", action="store_true", help="with --calibrate: judge OUT/calibration.csv again "
                    "(after the ladder's checks changed) instead of scoring")
    ap.add_argument("--seeds", type=int, default=3, help="with --calibrate: seeds per set (>= 2; the noise is their spread)")
    args = ap.parse_args(argv)
    if args.calibrate is None and args.runs_dir is None:
        ap.error("the following arguments are required: runs_dir (or --calibrate NAME)")
    profiles = dict(PROFILES)
    source = (args.runs_dir or "").rstrip("/")
    # an archive's default output is beside it, never the report it came with (a rebuild lacks the scatter figures)
    out = Path(args.out or (Path(source).parent / "rebuilt" if is_archive(source) else f"{source}/report"))
    try:
        if args.calibrate is not None:
            from .calibrate import calibrate

            out = Path(args.out or Path(__file__).resolve().parent / "calibration" / args.calibrate)
            paths = calibrate(args.calibrate, out, data_paths(args.data), args.metrics, args.seeds, rejudge=args.rejudge)
        elif args.archive and is_archive(source):
            raise ValueError(f"--archive needs a runs folder; {source} is already an archive")
        elif args.extract_to is not None:
            if not is_archive(source):
                raise ValueError(f"--extract-to needs a {ARCHIVE_NAME} archive; {source} is a folder")
            unpack(source, args.extract_to)
            print(f"extracted {source} into {args.extract_to}")
            return 0
        else:
            profiles.update(parse_profile(p) for p in args.profile)
            paths = report(args, source, out, profiles)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for kind, p in paths.items():
        print(f"{kind:>8}: {p}")
    return 0


def report(args: argparse.Namespace, source: str, out: Path, profiles: dict) -> dict[str, Path]:
    """The leaderboard of RUNS (a folder or an archive), and its archive when asked."""
    with opened(source) as root:
        paths = write_report(root, out, profiles, figures=not args.no_figures, source=source,
                             data_paths=data_paths(args.data), calibration=[Path(c) for c in args.calibration])
        if args.archive:
            paths["archive"] = out / ARCHIVE_NAME
            counts = pack(root, paths["archive"])
            print(f"archived {counts['runs']} run directories, {counts['files']} files, "
                  f"{counts['bytes'] / 1e6:.2f} MB")
    return paths


def data_paths(items: list[str]) -> dict[str, str]:
    bad = [d for d in items if not re.fullmatch(r"\w+=.+", d)]
    if bad:
        raise ValueError(f"--data takes NAME=PATH (e.g. --data diabetes130=/data/uci), got {bad[0]!r}")
    return dict(d.split("=", 1) for d in items)


if __name__ == "__main__":
    sys.exit(main())
