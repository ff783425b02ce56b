"""The sweep's results: <sweep_dir>/results.csv, results.md (a table, best trial first, and the best trial as a
ready command) and objective.png (the objective against each swept parameter).

Written when a sweep ends (a Hydra callback) and by `shardtune sweep report <sweep_dir>` at any time, also while
the sweep runs or after it was interrupted: everything is read from the trials' trial.json files.
"""
import argparse
import csv
import math
import os
import shlex
import sys
from pathlib import Path
from typing import List

from hydra.experimental.callback import Callback

from .objective import direction_of
from .records import RECORD_NAME, TrialRecord, load_record

STATUS_ORDER = {"completed": 0, "pruned": 1, "running": 2, "failed": 3}


def collect(sweep_dir: Path) -> List[TrialRecord]:
    """Every trial of the sweep, best first: completed trials by objective, then pruned, unfinished, failed."""
    records = [load_record(path.parent) for path in Path(sweep_dir).glob(f"*/{RECORD_NAME}")]
    records = [record for record in records if record is not None]
    sign = {"minimize": 1, "maximize": -1}

    def rank(record: TrialRecord):
        value = record.value if record.value is not None else math.inf * sign[direction_of(record.objective)]
        return STATUS_ORDER.get(record.status, 2), sign[direction_of(record.objective)] * value, record.number
    return sorted(records, key=rank)


def swept_keys(records: List[TrialRecord]) -> List[str]:
    """The override keys whose value differs between trials, in the order they were given."""
    keys = []
    for record in records:
        keys += [key for key in record.params if key not in keys]
    return [key for key in keys if len({record.params.get(key) for record in records}) > 1]


def best_command(record: TrialRecord) -> str:
    """The best trial as a single run (the sweep's own settings left out)."""
    overrides = [override for override in record.overrides if not override.lstrip("+~").startswith("sweep.")]
    return " ".join(["shardtune", "train", *map(shlex.quote, overrides)])


def number(value, digits: str = ".4g") -> str:
    return "" if value is None else format(value, digits)


def short(error: str, limit: int = 160) -> str:
    """An error as the table shows it: its first sentence, at most `limit` characters (results.csv has it whole)."""
    first = error.split(". ")[0]
    return first if len(first) <= limit else first[:limit - 1] + "…"


def markdown(records: List[TrialRecord], sweep_dir: Path) -> str:
    keys = swept_keys(records)
    objective = records[0].objective
    counts = {status: sum(record.status == status for record in records) for status in STATUS_ORDER}
    lines = [f"# Sweep {Path(sweep_dir).name}", "",
             f"Objective: {objective} ({direction_of(objective)}d). Trials: {len(records)} "
             f"({', '.join(f'{count} {status}' for status, count in counts.items() if count)}).", "",
             "| trial | overrides | " + objective + " | tokens/s | peak memory (GiB) | status | run dir |",
             "|---|---|---|---|---|---|---|"]
    for record in records:
        swept = " ".join(f"{key}={record.params.get(key, '')}" for key in keys)
        status = record.status + (f": {short(record.error)}" if record.error else "")
        lines.append(f"| {record.number} | {swept} | {number(record.value)} | {number(record.tokens_per_second, ',.0f')} "
                     f"| {number(record.peak_memory_gib, '.2f')} | {status.replace('|', '/')} | {record.run_dir} |")
    best = records[0] if records[0].status == "completed" else None
    lines += ["", "Best trial: " + (f"{best.number} ({objective} {number(best.value)}); run it alone with:\n\n"
                                    f"    {best_command(best)}" if best else "none completed"), ""]
    return "\n".join(lines)


def write_csv(records: List[TrialRecord], path: Path) -> None:
    keys = swept_keys(records)
    columns = ["trial", "status", "objective", "value", "val_loss", "tokens_per_second", "peak_memory_gib",
               "wall_time_s", *keys, "run_dir", "error", "overrides"]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in records:
            writer.writerow([r.number, r.status, r.objective, r.value, r.val_loss, r.tokens_per_second,
                             r.peak_memory_gib, r.wall_time_s, *(r.params.get(key) for key in keys), r.run_dir,
                             r.error or "", " ".join(r.overrides)])
    os.replace(tmp, path)


def as_number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def plot(records: List[TrialRecord], path: Path) -> bool:
    """objective.png: one panel per swept parameter; failed trials as red crosses on the worst edge."""
    keys = swept_keys(records)
    measured = [r for r in records if r.value is not None and math.isfinite(r.value)]
    if not keys or not measured:
        return False
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    values = [r.value for r in measured]
    worst = max(values) if direction_of(records[0].objective) == "minimize" else min(values)
    figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for axis, key in zip(axes[0], keys):
        raw = [r.params.get(key) for r in records]
        numeric = all(as_number(value) is not None for value in raw)
        categories = sorted(set(raw), key=str)
        position = (lambda text: as_number(text)) if numeric else (lambda text: categories.index(text))
        for status, style in (("completed", dict(c="tab:blue", marker="o")), ("pruned", dict(c="tab:orange", marker="s")),
                              ("failed", dict(c="tab:red", marker="x"))):
            chosen = [r for r in records if r.status == status and (status == "failed" or r in measured)]
            if chosen:
                axis.scatter([position(r.params.get(key)) for r in chosen],
                             [worst if status == "failed" else r.value for r in chosen], label=status, **style)
        if numeric:
            xs = [as_number(value) for value in raw]
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                axis.set_xscale("log")
                axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels of 2e-4, 3e-4... overlap
        else:
            axis.set_xticks(range(len(categories)), categories)
        axis.set_xlabel(key)
        axis.set_ylabel(records[0].objective)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    os.replace(tmp, path)
    return True


def write_report(sweep_dir) -> str:
    """Write results.csv, results.md and objective.png; return the markdown."""
    sweep_dir = Path(sweep_dir)
    records = collect(sweep_dir)
    if not records:
        raise FileNotFoundError(f"{sweep_dir} holds no trials (no */{RECORD_NAME})")
    write_csv(records, sweep_dir / "results.csv")
    text = markdown(records, sweep_dir)
    (sweep_dir / "results.md").write_text(text)
    plotted = plot(records, sweep_dir / "objective.png")
    return text + f"\nWritten: {sweep_dir / 'results.csv'}, {sweep_dir / 'results.md'}" + \
        (f", {sweep_dir / 'objective.png'}" if plotted else "") + "\n"


class SweepReport(Callback):
    """Hydra callback (hydra.callbacks in config.yaml): the report once a multirun has ended."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            print(write_report(config.hydra.sweep.dir), flush=True)
        except FileNotFoundError:
            pass  # no trial got as far as starting (e.g. every job's config was refused)


def sweep_command(argv) -> None:
    parser = argparse.ArgumentParser(prog="shardtune sweep", description="Results of a sweep (shardtune train -m).")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="write results.csv, results.md and objective.png; print the table")
    report.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        sys.exit(f"shardtune: sweep_dir: {args.sweep_dir} is not a directory")
    try:
        print(write_report(args.sweep_dir))
    except FileNotFoundError as error:
        sys.exit(f"shardtune: sweep_dir: {error}")
