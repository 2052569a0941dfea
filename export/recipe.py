"""What an exported student expects as input, and where it came from, read from ``final.pt``.

:func:`input_recipe` is the one place that turns a checkpoint into the input recipe a user must
reproduce: the :class:`~distinit.train.checkpoint.InputRecipe` the checkpoint records, or, for a
checkpoint written before it recorded one, the same fields of its training config.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

from distinit.pipeline.errors import CheckpointError
from distinit.train.checkpoint import FinalCheckpoint
from distinit.train.flow import DIS_PRESET, FLOW_CLIP
from distinit.train.students import student_spec

# Teacher fields worth publishing: who the teacher is and how its targets were made. Its class
# names (a thousand strings for an ImageNet teacher) describe heads the export leaves out.
_TEACHER_FIELDS = (
    "name",
    "kind",
    "num_classes",
    "weights_sha256",
    "weights_source",
    "preprocessing",
)


_RECIPE_FIELDS = ("clip_len", "frame_stride", "resize", "crop")


def input_recipe(ckpt: FinalCheckpoint, source: Path) -> dict[str, Any]:
    """The clip the student was distilled on, as a user must build it: frames, sizes, values.
    ``source`` names the checkpoint in the refusal of one that does not record them."""
    if ckpt.recipe is not None:
        clip_len, frame_stride = ckpt.recipe.clip_len, ckpt.recipe.frame_stride
        (width, height), crop = ckpt.recipe.resize, ckpt.recipe.crop
        shard_fps = ckpt.recipe.shard_fps
    else:
        config = ckpt.config
        missing = [k for k in _RECIPE_FIELDS if k not in config]
        if missing:
            raise CheckpointError(
                f"{source}: its training config records no {', '.join(missing)}, so the input "
                "recipe of the export is unknown; export a final.pt written by distinit train"
            )
        clip_len, frame_stride, crop = config["clip_len"], config["frame_stride"], config["crop"]
        width, height = config["resize"]
        shard_fps = None  # checkpoints of this age did not record it
    recipe: dict[str, Any] = {
        "modality": ckpt.modality,
        "in_channels": ckpt.in_channels,
        "layout": "(B, C, T, H, W)",
        "clip_len": int(clip_len),
        # Shard rows are the frames extract stored: every native frame unless it ran with --fps
        # (then shard_fps says the rate the rows were sampled at).
        "frame_stride": int(frame_stride),
        "shard_fps": shard_fps,
        "resize": {"width": int(width), "height": int(height), "keep_aspect": False},
        "crop": int(crop),
        "test_crop": "centre",
    }
    if ckpt.modality == "rgb":
        spec = student_spec(ckpt.student)
        recipe["values"] = "RGB uint8 / 255, then (x - mean) / std per channel"
        recipe["mean"] = list(spec.mean)
        recipe["std"] = list(spec.std)
    else:
        recipe["values"] = (
            f"optical flow (dx, dy) in pixels per frame, clipped to +-{FLOW_CLIP:g} and divided "
            f"by {FLOW_CLIP:g} (values in [-1, 1]); no mean or std"
        )
        recipe["flow"] = {
            "method": f"cv2.DISOpticalFlow.create({DIS_PRESET}).calc(gray_t, gray_t+1) on "
            "cv2.COLOR_RGB2GRAY frames at the resize resolution, before cropping",
            "channels": ["dx", "dy"],
            "field_t": "forward flow from frame t to t+1; the last field repeats the one before",
        }
        recipe["mean"] = None
        recipe["std"] = None
    return recipe


def provenance(ckpt: FinalCheckpoint, checkpoint_sha256: str) -> dict[str, Any]:
    """Where the weights came from: teachers, shard set, length of the run, code versions."""
    return {
        "teachers": [{k: t.get(k) for k in _TEACHER_FIELDS if k in t} for t in ckpt.teachers],
        "shard_set": ckpt.shard_set,  # None: final.pt predates the record
        "steps": ckpt.step,
        "trained_with": f"distinit {ckpt.code_version}" if ckpt.code_version else None,
        "exported_with": f"distinit {version('distinit')}",
        "checkpoint_sha256": checkpoint_sha256,
        "train_config": ckpt.config,
    }
