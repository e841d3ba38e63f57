"""The kill test at length: kill -9 a training run many times at random moments, resume each time.

Reports kills survived, steps lost at most and on average, and whether the
final weights equal an uninterrupted run's; appends them to bench/RESULTS.md.

    python bench/kill_test.py --kills 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import write_slice  # noqa: E402
from kill_harness import run_kill_test  # noqa: E402
from results import append_entry, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--max-steps", type=int, default=4000)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_slice(Path(tmp) / "data", "train", 1000, "train")
        start = time.monotonic()
        report = run_kill_test(Path(tmp), corpus, kills=a.kills, max_steps=a.max_steps,
                               checkpoint_every=a.checkpoint_every, seed=a.seed, max_delay=2.0)
        seconds = time.monotonic() - start
    command = " ".join(["python", "bench/kill_test.py", *sys.argv[1:]])
    append_entry([f"\n## {date.today().isoformat()}: kill -9 test\n",
                  f"- Machine: {machine()}",
                  f"- Command: `{command}` (tiny model, 1,000 Multi30k pairs, a checkpoint every "
                  f"{a.checkpoint_every} updates, {a.max_steps} updates)",
                  f"- Result: {report.summary()}; {seconds:.0f} s"])
    if not report.identical:
        sys.exit("final weights differ from the uninterrupted run")


if __name__ == "__main__":
    main()
