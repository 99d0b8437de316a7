r"""Classifies images with an exported model after adapting it to a folder of examples.

    python -m tfmeta.adapt --saved_model=/tmp/run/export --support=DIR --query=DIR_OR_FILES \
        [--json] [--inner_steps=N]

``--support`` holds one subfolder per class (the subfolder name is the class name) with a few
example images each (PNG or JPEG, any size; colour is converted to grayscale, transparency is
composited onto white). ``--query`` is a directory of images or a comma-separated list of image
files and directories. Each query is printed with its predicted class and probability, as a table
or, with ``--json``, as one JSON document.

The model adapts to the support set inside the SavedModel (see :mod:`tfmeta.export`). With fewer
classes than the model's N ways, the unused outputs are masked out and the probabilities
renormalised over the classes present. All queries form one batch: with batch norm in
"transductive" mode (MAML's default) each prediction depends on the other queries too.

Images are sent as ``pixels / 255`` with white background = 1, the contract of the SavedModel, at
their own size when all images share one size (the graph resizes them like the training data);
otherwise each is first resized to the model's size with PIL's LANCZOS filter, the filter the
training data was prepared with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class AdaptError(ValueError):
    """Bad input for adaptation; the message names the offending path."""


@dataclasses.dataclass
class Prediction:
    """The prediction for one query image."""

    file: str
    label: str
    probability: float
    probabilities: dict[str, float]


def _image_files(directory: str) -> list[str]:
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if name.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(directory, name)))


def read_support(support_dir: str) -> tuple[list[str], list[str], list[int]]:
    """Lists a support directory.

    Returns:
      ``(class_names, files, labels)``: class names are the sorted subfolder names, and every image
      file in subfolder i has label i.

    Raises:
      AdaptError: missing directory, no class subfolders, or a class folder without images.
    """
    if not os.path.isdir(support_dir):
        raise AdaptError(f"support directory {support_dir!r} does not exist or is not a directory")
    classes = sorted(name for name in os.listdir(support_dir)
                     if os.path.isdir(os.path.join(support_dir, name)))
    if not classes:
        raise AdaptError(f"support directory {support_dir!r} has no class subfolders; expected one "
                         "subfolder of example images per class")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _image_files(os.path.join(support_dir, name))
        if not found:
            raise AdaptError(f"class folder {os.path.join(support_dir, name)!r} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    return classes, files, labels


def read_queries(queries: Sequence[str]) -> list[str]:
    """Expands query directories and files into a list of image files.

    Raises:
      AdaptError: a missing path, or no images at all.
    """
    files: list[str] = []
    for path in queries:
        if os.path.isdir(path):
            found = _image_files(path)
            if not found:
                raise AdaptError(f"query directory {path!r} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise AdaptError(f"query path {path!r} does not exist")
    if not files:
        raise AdaptError("no query images given")
    return files


def load_image(path: str) -> Any:
    """Opens an image as 8-bit grayscale (PIL mode "L"), transparency composited onto white.

    Raises:
      AdaptError: the file is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            return image.convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise AdaptError(f"cannot read image {path!r}: {e}") from e


def to_array(images: Sequence[Any], image_size: int) -> np.ndarray:
    """Stacks grayscale PIL images into float32 ``[B, H, W, 1]`` in [0, 1] (pixels / 255)."""
    from PIL import Image

    if len({image.size for image in images}) > 1:
        images = [image if image.size == (image_size, image_size)
                  else image.resize((image_size, image_size), resample=Image.LANCZOS)
                  for image in images]
    return np.stack([np.asarray(image, np.float32) / 255.0 for image in images])[..., None]


def classify(saved_model: Any, support_dir: str, queries: Sequence[str], *,
             inner_steps: int | None = None) -> tuple[list[str], list[Prediction]]:
    """Adapts an exported classifier to ``support_dir`` and classifies the query images.

    Args:
      saved_model: a SavedModel path, or the object ``tf.saved_model.load`` returned for it.
      support_dir: one subfolder of example images per class.
      queries: query image files and/or directories.
      inner_steps: inner steps; the export's configured number when None.

    Returns:
      ``(class_names, predictions)`` with one prediction per query file, in order.

    Raises:
      AdaptError: for any bad path, image or class count (the message names it).
    """
    import tensorflow as tf

    if isinstance(saved_model, str):
        if not os.path.isdir(saved_model) and not saved_model.startswith("gs://"):
            raise AdaptError(f"SavedModel directory {saved_model!r} does not exist")
        try:
            saved_model = tf.saved_model.load(saved_model)
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise AdaptError(f"cannot load a SavedModel from {saved_model!r}: {e}") from e
    meta = json.loads(saved_model.signatures["metadata"]()["json"].numpy().decode("utf-8"))
    if meta.get("task", "omniglot") != "omniglot" or "ways" not in meta:
        raise AdaptError("the SavedModel is not an image classifier (task "
                         f"{meta.get('task')!r}); tfmeta.adapt needs an Omniglot-style export")
    ways, size = int(meta["ways"]), int(meta["image_size"])
    classes, support_files, labels = read_support(support_dir)
    if len(classes) > ways:
        raise AdaptError(f"support directory {support_dir!r} has {len(classes)} class folders but "
                         f"the model was trained for {ways} ways; use at most {ways} classes")
    query_files = read_queries(queries)
    images = [load_image(f) for f in support_files + query_files]
    pixels = to_array(images, size)
    inputs = {
        "support_images": tf.constant(pixels[:len(support_files)]),
        "support_labels": tf.constant(labels, tf.int32),
        "query_images": tf.constant(pixels[len(support_files):]),
    }
    if inner_steps is None:
        out = saved_model.signatures["adapt_and_predict"](**inputs)
    else:
        if inner_steps < 0:
            raise AdaptError(f"inner_steps must be >= 0, got {inner_steps}")
        out = saved_model.signatures["adapt_and_predict_steps"](
            **inputs, inner_steps=tf.constant(inner_steps, tf.int32))
    # Outputs for classes without support examples are meaningless: drop them and renormalise.
    logits = out["logits"].numpy()[:, :len(classes)].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    predictions = []
    for path, p in zip(query_files, probs):
        best = int(np.argmax(p))
        predictions.append(Prediction(
            file=path, label=classes[best], probability=float(p[best]),
            probabilities={name: float(v) for name, v in zip(classes, p)}))
    return classes, predictions


def format_table(predictions: Sequence[Prediction]) -> str:
    """A fixed-width table: query file, predicted class, probability."""
    rows = [("query", "class", "probability")] + [
        (p.file, p.label, f"{p.probability:.3f}") for p in predictions]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _define_flags() -> dict[str, Any]:
    """Defines the binary's flags (only when run as a binary, so importing defines none)."""
    from absl import flags

    holders = {
        "saved_model": flags.DEFINE_string("saved_model", None, "Exported SavedModel directory."),
        "support": flags.DEFINE_string(
            "support", None, "Directory with one subfolder of example images per class."),
        "query": flags.DEFINE_list(
            "query", None, "Query image directory, or comma-separated image files/directories."),
        "json": flags.DEFINE_bool("json", False, "Print JSON instead of a table."),
        "inner_steps": flags.DEFINE_integer(
            "inner_steps", None, "Inner steps (default: the export's configured number).",
            lower_bound=0),
    }
    flags.mark_flags_as_required(["saved_model", "support", "query"])
    return holders


def main(argv: list[str], fl: dict[str, Any]) -> int:
    """Runs the binary with parsed flag holders ``fl``; returns the exit code."""
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        classes, predictions = classify(fl["saved_model"].value, fl["support"].value,
                                        fl["query"].value, inner_steps=fl["inner_steps"].value)
    except AdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if fl["json"].value:
        print(json.dumps({"saved_model": fl["saved_model"].value, "classes": classes,
                          "predictions": [dataclasses.asdict(p) for p in predictions]},
                         indent=2))
    else:
        print(format_table(predictions))
    return 0


def run() -> None:
    """Console-script entry point."""
    from absl import app

    holders = _define_flags()
    app.run(lambda argv: main(argv, holders))


if __name__ == "__main__":
    run()
