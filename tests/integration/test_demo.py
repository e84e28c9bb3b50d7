"""The README's first command runs the whole bus: checked on its own private ports and data."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.free_ports import free_ports

pytestmark = pytest.mark.integration


def test_demo_runs_traffic_end_to_end_and_shuts_down(tmp_path):
    env = {**os.environ, "CAREBUS_DATA_DIR": str(tmp_path / "bus"), "CAREBUS_DROP_DIR": str(tmp_path / "bus" / "drop")}
    names = ("CAREBUS_KAFKA_PORT", "CAREBUS_KAFKA_CONTROLLER_PORT", "CAREBUS_REDIS_PORT", "CAREBUS_MLLP_PORT",
             "CAREBUS_HTTP_PORT", "CAREBUS_DELIVERY_PORT")
    for var, port in zip(names, free_ports(len(names), width=2)):
        env[var] = str(port)
    try:
        result = subprocess.run([sys.executable, "-m", "carebus.cli", "demo", "--people", "80", "--batch", "40",
                                 "--duration", "0", "--no-live"], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        summary = re.search(r"([\d,]+) shared records from ([\d,]+) source records; the sample subscriber verified "
                            r"([\d,]+)", " ".join(result.stdout.split()))
        assert summary, result.stdout[-2000:]
        records, sources, received = (int(x.replace(",", "")) for x in summary.groups())
        assert 0 < records <= sources and received > 0
        assert re.search(r"bad signatures\s*│\s*0\s", result.stdout), "every notification carried a valid signature"
    finally:
        subprocess.run([sys.executable, "-m", "carebus.cli", "down"], env=env, capture_output=True, timeout=120)
