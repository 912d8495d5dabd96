"""Direction (bigger or smaller is better) and unit of a benchmark metric, guessed from its name."""

from __future__ import annotations

_SMALLER_SUFFIXES = (("_ms", "ms"), ("_us", "us"), ("_sec", "s"), ("_s", "s"), ("_mb", "MB"), ("_gb", "GB"),
                     ("_bytes", "B"))
_SMALLER_WORDS = ("latency", "time", "seconds", "memory", "loss")


def guess_direction_unit(name: str) -> tuple[str, str]:
    """Direction and unit from a benchmark metric's name: ratios, speedups and rates (per second, FLOP/s) are
    bigger-is-better; times (incl. seconds per token), memory and losses smaller-is-better; else bigger."""
    low = name.lower()
    if "ratio" in low or "speedup" in low or low.endswith("_x"):
        return "bigger", "x"
    if "gflops" in low or "tflops" in low:
        return "bigger", "GFLOP/s" if "gflops" in low else "TFLOP/s"
    if low.endswith(("per_s", "per_sec", "/s", "tok_s")) or "throughput" in low:
        return "bigger", "1/s"
    for marker, unit in (("ms_per_", "ms"), ("s_per_", "s"), ("sec_per_", "s")):
        if marker in low:
            return "smaller", unit
    for suffix, unit in _SMALLER_SUFFIXES:
        if low.endswith(suffix):
            return "smaller", unit
    if any(w in low for w in _SMALLER_WORDS):
        return "smaller", ""
    return "bigger", ""
