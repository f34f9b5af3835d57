"""Peak memory of a streamed training run as the data grows: the same run on 1× and 10× the shards.

    python benchmarks/streaming_memory.py --base_images 2000 --factor 10 --steps 40 [--json PATH]

Writes webdataset shards of the built-in digits (repeated to the size asked, 200 images a shard) to a temporary
folder, then runs `train_ddpm.py --train_shards ...` (ddpm-tiny-8 at 8×8, batch 32, `--max_train_steps`) in a fresh
process for each size and reads its peak RSS (`resource.getrusage(RUSAGE_CHILDREN)` after the run). A stream holds
the shuffle buffer and a batch, not the data, so the peak should not grow with the data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom_pipelines.io import write_json  # noqa: E402
from custom_pipelines.precision import cpu_capability  # noqa: E402
from tests.training.streaming_data import digits_rows, write_tar_shards  # noqa: E402

PER_SHARD = 200


def make_shards(folder: str, count: int) -> str:
    rows = digits_rows(1797, resolution=8)
    rows = [rows[i % len(rows)] for i in range(count)]
    return write_tar_shards(folder, rows, num_shards=max(1, count // PER_SHARD))


def peak_rss_mib(shards: str, steps: int, out: str) -> tuple[float, float]:
    """(peak RSS of the training process in MiB, seconds)."""
    cmd = [
        sys.executable, str(REPO / "training" / "train_ddpm.py"), "--train_shards", shards, "--model_config",
        "ddpm-tiny-8", "--resolution", "8", "--train_batch_size", "32", "--max_train_steps", str(steps),
        "--checkpointing_steps", str(steps), "--validation_steps", str(steps), "--num_validation_images", "4",
        "--num_inference_steps", "2", "--report_to", "none", "--mixed_precision", "no", "--output_dir", out,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=REPO)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise RuntimeError("the child's peak RSS did not exceed an earlier child's: run each size in its own process")
    return peak / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base_images", type=int, default=2000)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results, patterns = {}, {}
    with tempfile.TemporaryDirectory() as root:
        for count in (args.base_images, args.base_images * args.factor):
            patterns[count] = make_shards(os.path.join(root, f"shards-{count}"), count)
            size = sum(f.stat().st_size for f in Path(root, f"shards-{count}").iterdir()) / 2**20
            results[count] = {"shards_mib": round(size, 1)}
        for count in (args.base_images, args.base_images * args.factor):
            pattern = patterns[count]
            # each size in its own helper process, so that RUSAGE_CHILDREN is that run's own peak
            code = (
                "import sys, json; sys.path.insert(0, 'benchmarks'); from streaming_memory import peak_rss_mib; "
                f"print(json.dumps(peak_rss_mib({pattern!r}, {args.steps}, {os.path.join(root, f'run-{count}')!r})))"
            )
            line = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
            peak, seconds = json.loads(line.stdout.strip().splitlines()[-1])
            results[count].update(peak_rss_mib=round(peak, 1), seconds=round(seconds, 1))
    cpu = f"{platform.processor() or platform.machine()}, {cpu_capability()}, {os.cpu_count()} cores"
    print(f"| images | shards on disk | peak RSS of the run | time |   ({args.steps} steps, batch 32, {cpu})")
    print("|---|---|---|---|")
    for count, row in sorted(results.items()):
        print(f"| {count} | {row['shards_mib']} MiB | {row['peak_rss_mib']} MiB | {row['seconds']} s |")
    if args.json:
        write_json(args.json, {"cpu": cpu, "steps": args.steps, "results": results})


if __name__ == "__main__":
    main()
