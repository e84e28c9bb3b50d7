"""The benchmarks' CPU meter: it must tell a busy process from an idle one, per process."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.measurement import CpuMeter, cpu_seconds, with_descendants


def test_the_cpu_meter_charges_each_process_its_own_work() -> None:
    # The busy child counts its own CPU time, so the test asserts work done, never a wall-clock time.
    # Each child says "ready" once started, so its interpreter's start-up is not in the window.
    ready = "import sys, time\nprint('ready', flush=True)\n"
    busy = subprocess.Popen([sys.executable, "-c", ready + "sys.stdin.readline()\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.4: pass\nsys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    idle = subprocess.Popen([sys.executable, "-c", ready + "sys.stdin.read()"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        for p in (busy, idle):
            assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        meter = CpuMeter({"busy": [busy.pid], "idle": [idle.pid], "gone": [2 ** 22 + 12345]})
        meter.start()
        before = cpu_seconds(busy.pid)
        assert busy.stdin is not None
        busy.stdin.write(b"go\n")
        busy.stdin.flush()
        give_up = time.monotonic() + 30      # a meter that reads nothing fails below, not by hanging
        while cpu_seconds(busy.pid) - before < 0.4 and time.monotonic() < give_up:
            time.sleep(0.01)
        used = meter.stop()
        assert used["busy"] >= 0.2
        assert used["idle"] < 0.05
        assert used["gone"] == 0.0          # a process that is not there costs nothing and breaks nothing
        assert meter.per_message(1000).startswith("busy ")
        # Without the busy process, what is left is (almost) nothing: the subtotal leaves it out.
        assert meter.per_message(1000, outside=("busy",)).endswith(
            f"({(used['idle'] + used['gone']) / 1000 * 1e6:,.0f} without the busy)")
    finally:
        for p in (busy, idle):
            p.communicate(b"")


def test_a_process_is_measured_with_the_processes_it_started() -> None:
    # A parent that starts a child that starts a grandchild (as the connectors start their bulk
    # extract workers): all three are found, and nothing else is.
    code = ("import subprocess, sys\n"
            "child = subprocess.Popen([sys.executable, '-c', {inner!r}], stdin=sys.stdin, stdout=sys.stdout)\n"
            "child.wait()\n")
    grandchild = "import sys\nprint('ready', flush=True)\nsys.stdin.read()"
    parent = subprocess.Popen([sys.executable, "-c", code.format(inner=code.format(inner=grandchild))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == b"ready\n"
        family = with_descendants(parent.pid)
        assert family[0] == parent.pid and len(family) == 3
        assert os.getpid() not in family
    finally:
        parent.communicate(b"")
    assert with_descendants(2 ** 22 + 12345) == [2 ** 22 + 12345]      # no such process: itself, no children
