"""Memory of a process tree while it runs: the peak resident memory of a process and all its
descendants (driver, raylet, object store, workers), sampled every 0.2 s. Used by
``bench_scale`` and by the memory tests (``tests/test_memory.py``)."""

from __future__ import annotations

import threading


class TreePeak(threading.Thread):
    """Samples the resident memory of a process and all its descendants every 0.2 s; keeps the
    peak of the sum (``tree_peak``) and of the process alone (``driver_peak``). Summed RSS counts
    pages shared between processes more than once: an upper bound."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.tree_peak, self.driver_peak = pid, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                total += rss
                if p.pid == self.pid:
                    self.driver_peak = max(self.driver_peak, rss)
            self.tree_peak = max(self.tree_peak, total)
            self.stop.wait(0.2)
