"""Command-line options shared by the benchmark scripts (the model they build)."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--preset/--depth/--width/--heads/--latent-dim/--vocab/--decoder-hidden/--batch/--seq."""
    p.add_argument("--preset", choices=["ELF-B", "ELF-M", "ELF-L"], default=None)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=None, help="default: width/64")
    p.add_argument("--latent-dim", type=int, default=384)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--decoder-hidden", type=int, default=512, help="width of the decoder head (ELF: 512)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
