"""Run the project's own CLI from benchmark scripts and read its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("SIAMESE_INDEX_SHARED", Path(__file__).resolve().parents[2] / "shared" / "data"))


def siamese(*args: str) -> tuple[dict | list, float]:
    """Run `siamese-index ARGS --json`; return (parsed output, seconds)."""
    cmd = [sys.executable, "-m", "siamese_index.cli", *args, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), seconds
