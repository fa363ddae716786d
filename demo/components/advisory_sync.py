"""Demo of a service the operator already runs under a unit of their own, which kernelfence
hardens with a drop-in only: it reports how many files the executor's advisory database holds."""

import os
import signal
import sys
import time

DB = os.environ.get("KF_ADVISORY_DB", "/srv/kernelfence/executor/advisory-db")

if __name__ == "__main__":
    # PID 1 of its own PID namespace (PrivatePIDs=, systemd >= 257): the kernel drops a signal
    # that has no handler, so without one `systemctl stop` would wait TimeoutStopSec=.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    while True:
        count = sum(len(files) for _, _, files in os.walk(DB))
        print(f"advisory-db: {count} files", flush=True)
        time.sleep(60)
