"""Fault injection for the kill tests (tests/training/kill_resume.py): a process that reaches a named point with
`CUSTOM_PIPELINES_FAULT` set to match kills itself with SIGKILL — no cleanup, no `finally`, as an OOM killer or a
preempted machine would.

`CUSTOM_PIPELINES_FAULT="<point>[:<step>[:<rank>]],..."`; points: `step` (after the optimizer update of that step,
before its checkpoint), `checkpoint` (mid-write: accelerate's state is in the temp folder, the rename has not
happened), `save` (mid final save: every component is written to the staging folder, nothing moved into place).
Unset (always, outside tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "CUSTOM_PIPELINES_FAULT"


def fault_point(name: str, step: int | None = None) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank = int(os.environ.get("RANK", "0"))
    for item in spec.split(","):
        point, _, rest = item.strip().partition(":")
        at, _, on_rank = rest.partition(":")
        if point != name or (at and step != int(at)) or (on_rank and rank != int(on_rank)):
            continue
        sys.stderr.write(f"{FAULT_ENV}: SIGKILL at {name} (step {step}, rank {rank})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
