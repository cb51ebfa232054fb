"""voc_jax/memory.py: byte counts in the unit that fits; this machine's memory."""

from __future__ import annotations

import pytest

from voc_jax import memory


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (25.4e9, "23.7 GiB"), (9.83e12, "8.9 TiB")],
)
def test_format_bytes_uses_the_unit_that_fits(n, text):
    assert memory.format_bytes(n) == text


def test_physical_memory_is_what_proc_says():
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    assert abs(memory.physical_memory() - total_kib * 1024) < 64 << 20
