"""The benchmark's settings, shared by every scenario."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCENARIOS = ("overhead", "artifacts", "scale")


@dataclass(frozen=True)
class Config:
    """How much to measure and where to put temporary files."""

    quick: bool = False
    """A smoke run: one repetition, smaller artifact mix, fewer concurrent runs."""
    repeat: int = 5
    """Repetitions of each timed step (heavy S3 passes are capped, see `artifacts`)."""
    base: Path | None = None
    """Folder for temp dirs (the system's temp folder when None)."""
    keep: bool = False
    """Keep temp dirs for inspection instead of removing them."""
