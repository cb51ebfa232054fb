"""How much memory this machine has, and byte counts as people read them (the limits that
validation, the feature cache and the image loaders state in their messages)."""

from __future__ import annotations

import os


def physical_memory() -> int:
    """Bytes of RAM (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def format_bytes(n: float) -> str:
    """1.5 KiB, 23.7 GiB, 1.1 TiB: the unit that fits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
