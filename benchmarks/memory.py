"""Peak resident memory of repeated calls, for the CPU benchmarks (torch has no CPU allocator
statistics): a thread samples the RSS every 0.5 ms while `fn` runs; the figure is the highest RSS
seen minus the RSS just before the first call. Run each variant in a fresh process."""
from __future__ import annotations

import os
import threading
import time


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def time_and_peak(fn, repeats: int) -> tuple[list[float], float]:
    """(seconds of each call, peak RSS increase in MiB) over `repeats` calls of `fn`."""
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    base = rss()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    times = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    finally:
        stop.set()
        thread.join()
    return times, (peak[0] - base) / 2**20
