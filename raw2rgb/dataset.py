"""The dataset folder ``prepare`` builds: its stages, in order, each in a sub-folder of that name
(``DATASET/unpack``, ``patches``, ``saliency``, ``shards``), the splits, and the files beside them.
Every path inside a DATASET is spelled here: the stages (``prepare`` and the ``shards`` command)
find their folders through :func:`stage_folder`, and ``ShardDataset``, ``profile``, ``inspect``,
``train``, ``evaluate`` and ``report`` find the shards folder through it (``shards.shards_root``);
the shards folder's ``index.json`` is ``pipeline/shards.py``'s ``ShardIndex``.
"""

from __future__ import annotations

import os
from pathlib import Path

STAGES = ("unpack", "patches", "saliency", "shards")  # in the order prepare runs them
SPLITS = ("train", "val", "test")
PREPARE = "prepare.json"  # the PrepareConfig DATASET was built with
SOURCE = "source.json"  # DATASET's record of the SRC it was built from (prepare.check_source)
SPLITS_FILE = "splits.json"  # scene → split
SUMMARY = "summary.json"


def stage_folder(dataset: os.PathLike | str, stage: str) -> Path:
    """``DATASET/<stage>``: where a stage of ``prepare`` writes."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} ({', '.join(STAGES)})")
    return Path(dataset) / stage
