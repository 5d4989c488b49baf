"""Offline speed: `banditrec simulate` and `banditrec train`, end to end, CSV and Parquet.

One command, one table::

    .venv/bin/python -m benchmarks.bench_offline               # 1M rows, ~1 minute
    .venv/bin/python -m benchmarks.bench_offline --rows 200000 --repeats 1   # smoke test
    .venv/bin/python -m benchmarks.bench_offline --rows 5000000 --repeats 1 --no-in-process

Each row runs the real command in a fresh process, as a user would (``python -m banditrec
simulate --rows N --out file``, then ``train --data file``), `--repeats` times, and reports
the best and the median wall time from starting the process to its exit (interpreter start
and imports included), the rate in rows per second over that whole time, the command's own
time (what it prints: from parsing its options to its summary line, imports excluded) and
the rate over it, and the process's CPU seconds (user + system, all threads). Memory is the
peak resident size of the process (ru_maxrss).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # python -m benchmarks.<name>, or python benchmarks/<name>.py
    from benchmarks import _machine
except ImportError:
    import _machine  # type: ignore[no-redef]

TARGET_ROWS_PER_S = 1_000_000


def run(args: list[str], cwd: Path) -> tuple[float, float, float, int, str]:
    """(wall s, command's own s, CPU s, peak RSS bytes, output) of one CLI run."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "banditrec", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("BANDITREC_")},
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    output = process.stdout.read().decode() if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"banditrec {' '.join(args)} failed:\n{output}")
    own = re.search(r" in (\d+\.\d+) s", " ".join(output.split()))
    return (
        wall,
        float(own.group(1)) if own else float("nan"),
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss * 1024,
        output,
    )


def in_process(root: Path, rows: int, repeats: int, policy: str) -> list[list[str]]:
    """The same steps called in this process once warm (imports done, kernels loaded):
    the rate of the pipeline itself, without the fixed cost of a process start."""
    import numpy as np

    from banditrec.features import load_default_schema
    from banditrec.logged_data import write_logged
    from banditrec.policies import build_policy
    from banditrec.sim import AppSimulator
    from banditrec.training import train_from_file

    schema = load_default_schema()
    lines = []
    for fmt in ("csv", "parquet"):
        data = root / f"warm.{fmt}"
        steps = {
            f"simulate → {fmt} (in process)": lambda data=data: write_logged(
                AppSimulator().logged_batches(rows, np.random.default_rng(0)), data
            ),
            f"train ← {fmt} (in process)": lambda data=data: train_from_file(
                data, root / "warm.npz", schema, build_policy(policy, schema=schema)
            ),
        }
        for name, step in steps.items():
            walls, cpus = [], []
            for _ in range(repeats + 1):  # the first is the warm-up
                start, cpu = time.perf_counter(), time.process_time()
                step()
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
            walls, cpus = sorted(walls[1:]), sorted(cpus[1:])
            lines.append(
                [
                    name, f"{rows:,}",
                    f"{walls[0]:.2f} / {statistics.median(walls):.2f}",
                    f"{rows / walls[0]:,.0f}", "-", "-", f"{cpus[0]:.2f}", "-",
                    f"{data.stat().st_size / 2**20:.0f} MB",
                ]
            )  # fmt: skip
            print(" | ".join(lines[-1]), file=sys.stderr)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true", help="Print a Markdown table.")
    parser.add_argument(
        "--no-in-process", action="store_true", help="Only the CLI runs (e.g. at 5M rows)."
    )
    parser.add_argument(
        "--policy",
        default="linucb",
        help="train's --policy: the target is for LinUCB's batched fit (the default `auto` "
        "learns row by row in one compiled call).",
    )
    args = parser.parse_args(argv)
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-offline-") as tmp:
        root = Path(tmp)
        # The fixed cost of a process (interpreter, imports, kernels loaded, exit): the same
        # commands on 1,000 rows.
        tiny = root / "tiny.parquet"
        steps = {
            "start-up: simulate": ["simulate", "--rows", "1000", "--out", str(tiny)],
            "start-up: train": ["train", "--data", str(tiny), "--model", str(root / "t.npz")],
        }
        for name, command in steps.items():
            command += ["--policy", args.policy] if command[0] == "train" else []
            runs = [run(command, root) for _ in range(args.repeats)]
            walls = sorted(r[0] for r in runs)
            lines.append(
                [
                    name, "1,000", f"{walls[0]:.2f} / {statistics.median(walls):.2f}", "-",
                    f"{min(r[1] for r in runs):.1f}", "-", f"{min(r[2] for r in runs):.2f}",
                    f"{max(r[3] for r in runs) / 2**20:.0f} MB", "-",
                ]
            )  # fmt: skip
            print(" | ".join(lines[-1]), file=sys.stderr)
        for fmt in ("csv", "parquet"):
            data = root / f"logged.{fmt}"
            steps = {
                f"simulate → {fmt}": ["simulate", "--rows", str(args.rows), "--out", str(data)],
                f"train ← {fmt}": ["train", "--data", str(data), "--model", str(root / "m.npz")],
            }
            for name, command in steps.items():
                command += ["--policy", args.policy] if command[0] == "train" else []
                runs = [run(command, root) for _ in range(args.repeats)]
                walls, owns = sorted(r[0] for r in runs), sorted(r[1] for r in runs)
                size = data.stat().st_size
                lines.append(
                    [
                        name,
                        f"{args.rows:,}",
                        f"{walls[0]:.2f} / {statistics.median(walls):.2f}",
                        f"{args.rows / walls[0]:,.0f}",
                        f"{owns[0]:.1f}",
                        f"{args.rows / owns[0]:,.0f}" if owns[0] > 0 else "-",
                        f"{min(r[2] for r in runs):.2f}",
                        f"{max(r[3] for r in runs) / 2**20:.0f} MB",
                        f"{size / 2**20:.0f} MB",
                    ]
                )
                print(" | ".join(lines[-1]), file=sys.stderr)
        if not args.no_in_process:
            lines += in_process(root, args.rows, args.repeats, args.policy)
    header = [
        "step", "rows", "wall s best / median", "rows/s (wall)", "own s", "rows/s (own)",
        "CPU s", "peak RSS", "file",
    ]  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        for line in [header, *lines]:
            print("  ".join(f"{c:>20}" for c in line))
    for note in _machine.machine_notes(["numpy", "pyarrow", "numba"]):
        print(note)
    print(
        f"target: {TARGET_ROWS_PER_S:,} rows/s. Own time excludes the interpreter's start "
        "and imports; the wall time includes them."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
