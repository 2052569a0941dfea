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
from distinit.pipeline.flow import DIS_PRESET, FLOW_CLIP
from distinit.train.checkpoint import FinalCheckpoint, InputRecipe
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


def recorded_recipe(ckpt: FinalCheckpoint, source: Path) -> InputRecipe:
    """The checkpoint's input recipe: the one it records, or for a checkpoint written before it
    recorded one, the same fields of its training config (shards of every native frame, the
    student's own RGB statistics). ``source`` names the checkpoint in the refusal of one whose
    config lacks them."""
    if ckpt.recipe is not None:
        return ckpt.recipe
    config = ckpt.config
    missing = [k for k in _RECIPE_FIELDS if k not in config]
    if missing:
        raise CheckpointError(
            f"{source}: its training config records no {', '.join(missing)}, so the input "
            "recipe of the export is unknown; export a final.pt written by distinit train"
        )
    spec = student_spec(ckpt.student)
    rgb = ckpt.modality == "rgb"
    return InputRecipe(
        modality=ckpt.modality,
        clip_len=int(config["clip_len"]),
        frame_stride=int(config["frame_stride"]),
        resize=(int(config["resize"][0]), int(config["resize"][1])),
        crop=int(config["crop"]),
        mean=spec.mean if rgb else None,
        std=spec.std if rgb else None,
        shard_fps=None,  # checkpoints of this age did not record it
    )


def input_recipe(ckpt: FinalCheckpoint, source: Path) -> dict[str, Any]:
    """The clip the student was distilled on, as a user must build it: frames, sizes, values."""
    own = recorded_recipe(ckpt, source)
    width, height = own.resize
    recipe: dict[str, Any] = {
        "modality": ckpt.modality,
        "in_channels": ckpt.in_channels,
        "layout": "(B, C, T, H, W)",
        "clip_len": own.clip_len,
        # Shard rows are the frames extract stored: every native frame unless it ran with --fps
        # (then shard_fps says the rate the rows were sampled at).
        "frame_stride": own.frame_stride,
        "shard_fps": own.shard_fps,
        "resize": {"width": width, "height": height, "keep_aspect": False},
        "crop": own.crop,
        "test_crop": "centre",
    }
    if ckpt.modality == "rgb":
        assert own.mean is not None and own.std is not None, "an RGB recipe has its statistics"
        recipe["values"] = "RGB uint8 / 255, then (x - mean) / std per channel"
        recipe["mean"] = list(own.mean)
        recipe["std"] = list(own.std)
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
