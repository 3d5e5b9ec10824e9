"""Helpers shared by the benchmark scripts: timing and a results table."""

from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def timer(results: dict, name: str):
    t0 = time.perf_counter()
    yield
    results[name] = time.perf_counter() - t0


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
