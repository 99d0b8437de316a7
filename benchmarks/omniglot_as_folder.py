"""Omniglot written out as a folder of class folders, to train it through ``folder:`` like any data.

Writes every character's drawings as 105x105 RGB PNGs, dark strokes on white as in the archives,
to ``OUT/images/<Alphabet>__<characterNN>/<NN>.png``, and the native 'maml' split (the same
characters in the same order, see tfmeta.data.omniglot.split_indices) as class lists
``OUT/lists/{train,validation,test}.txt``. Trained with those lists, the folder source draws the
same episodes as the native path for the same seed (same classes, drawings and rotations); the
pixels differ only in polarity (white background instead of black) and in the rounding of the
resize. Then, for example (docs/results.md has the measured comparison)::

    python benchmarks/omniglot_as_folder.py --out=/tmp/omniglot_folder
    python -m tfmeta.train --config=configs/omniglot_maml.py:5way1shot --workdir=/tmp/native
    python -m tfmeta.train --config=configs/omniglot_maml.py:5way1shot --workdir=/tmp/folder \\
        --config.task=images --config.data.source=folder:/tmp/omniglot_folder/images \\
        --config.data.class_lists=/tmp/omniglot_folder/lists

Prints one JSON line: what was written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image


def write(out: str, *, subset: str = "full", scheme: str = "maml", split_seed: int = 1,
          data_dir: str | None = None, archives_dir: str | None = None) -> dict:
    """Writes the folder and class lists (see the module docstring); returns a summary."""
    from tfmeta.data import omniglot

    data = omniglot.load(data_dir=data_dir, archives_dir=archives_dir, image_size=105,
                         subset=subset)
    names = [c.replace("/", "__") for c in data.characters]
    images_dir, lists_dir = os.path.join(out, "images"), os.path.join(out, "lists")
    os.makedirs(lists_dir, exist_ok=True)
    for c, name in enumerate(names):
        folder = os.path.join(images_dir, name)
        os.makedirs(folder, exist_ok=True)
        for d in range(data.images.shape[1]):
            # The prepared pool has bright strokes on black; the archives' PNGs are the reverse.
            gray = 255 - data.images[c, d]
            Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB").save(
                os.path.join(folder, f"{d:02d}.png"))
    counts = {}
    for split in omniglot.SPLITS:
        indices = omniglot.split_indices(data, scheme, split, split_seed)
        with open(os.path.join(lists_dir, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(names[i] + "\n" for i in indices))
        counts[split] = len(indices)
    return {"out": out, "characters": len(names), "drawings": int(data.images.shape[1]),
            "split_scheme": scheme, "classes": counts}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--subset", default="full", choices=("full", "small"))
    parser.add_argument("--split_scheme", default="maml", choices=("maml", "lake", "reptile"))
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--archives_dir", default=None)
    args = parser.parse_args(argv)
    start = time.time()
    summary = write(args.out, subset=args.subset, scheme=args.split_scheme,
                    data_dir=args.data_dir, archives_dir=args.archives_dir)
    summary["seconds"] = round(time.time() - start, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
