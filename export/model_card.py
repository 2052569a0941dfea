"""The model card (``README.md``) of an export: what the student learnt from, how to load it with
plain torchvision, the input it expects, and its eval results when given.

Everything here is written from the export's ``config.json``, so the card cannot disagree with
it; the loading code is the card's own code block, which the tests run as they are.
"""

from __future__ import annotations

from typing import Any

from distinit.eval.report import METRICS


def loading_code(config: dict[str, Any]) -> str:
    """Python that builds torchvision's network and loads the export into it (``clip`` in,
    ``features`` out), using torch, torchvision and safetensors only."""
    tv = config["torchvision"]
    conv = tv["first_conv"]
    lines = [
        "import torch, torchvision",
        "from safetensors.torch import load_file",
        "",
        f"net = {tv['builder']}()",
        f"net.{tv['classifier']} = torch.nn.Identity()  # no classifier: the export gives features",
    ]
    if tv["global_pool"] is not None:
        lines.append(
            f"net.{tv['global_pool']} = torch.nn.AdaptiveAvgPool3d(1)  # pooled globally, any size"
        )
    if conv["replaced"]:
        lines.append(
            f"{_attribute('net', conv['module'])} = torch.nn.Conv3d({conv['in_channels']}, "
            f"{conv['out_channels']}, {tuple(conv['kernel_size'])}, {tuple(conv['stride'])}, "
            f"{tuple(conv['padding'])}, bias={conv['bias']})  # {config['input']['modality']} input"
        )
    lines += [
        'net.load_state_dict(load_file("model.safetensors"))',
        f"features = net.eval()(clip)  # {_clip_shape(config)} -> (B, {config['feature_dim']})",
    ]
    return "\n".join(lines) + "\n"


def _attribute(root: str, dotted: str) -> str:
    """``stem.0`` -> ``net.stem[0]``: a module path as Python that assigns to it."""
    return root + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in dotted.split("."))


def _plain(config: dict[str, Any]) -> str:
    """The torchvision network the export fits without changes, but for its classifier."""
    tv = config["torchvision"]
    if tv["first_conv"]["replaced"]:
        return f"`{tv['builder']}()` with its first convolution replaced as above"
    return f"an unmodified `{tv['builder']}()`"


def _clip_shape(config: dict[str, Any]) -> str:
    recipe = config["input"]
    side = recipe["crop"]
    return f"(B, {recipe['in_channels']}, {recipe['clip_len']}, {side}, {side})"


def model_card(config: dict[str, Any], results: dict[str, Any] | None) -> str:
    recipe, origin = config["input"], config["provenance"]
    teachers = ", ".join(
        f"`{t['name']}` ({t.get('kind', 'logits')}, {t.get('num_classes')} outputs)"
        for t in origin["teachers"]
    )
    shard_set = origin["shard_set"]
    videos = (
        f"{shard_set['videos']} unlabelled videos ({shard_set['rows']} frames, shard set "
        f"`{shard_set['digest'][:12]}`)"
        if shard_set
        else "unlabelled videos (the checkpoint predates the shard-set record)"
    )
    size = recipe["resize"]
    if recipe["modality"] == "rgb":
        values = f"{recipe['values']}: mean {recipe['mean']}, std {recipe['std']}"
    else:
        values = f"{recipe['values']}; flow by {recipe['flow']['method']}"
    text = [
        f"# {config['student']} distilled by DistInit ({recipe['modality']})",
        "",
        f"A `{config['student']}` video backbone ({config['feature_dim']}-d features) trained "
        f"without video labels to match the image teachers {teachers} on {videos}, "
        f"{origin['steps']} steps ({origin['trained_with'] or 'distinit'}; exported with "
        f"{origin['exported_with']}). The distillation heads are left out: the weights are "
        "torchvision's backbone, for fine-tuning or features.",
        "",
        "## Load it with torchvision",
        "",
        "```python",
        loading_code(config).rstrip("\n"),
        "```",
        "",
        f"`load_state_dict(..., strict=False)` into {_plain(config)} misses only its "
        f"classifier: {', '.join(config['torchvision']['missing_keys'])}.",
        "",
        "## Input",
        "",
        f"* {recipe['clip_len']} frames, {recipe['frame_stride']} stored frame(s) apart "
        + _stored_frames(recipe["shard_fps"]),
        f"* resized to {size['width']}x{size['height']} (aspect not kept), then a "
        f"{recipe['crop']}x{recipe['crop']} crop ({recipe['test_crop']} at test time)",
        f"* {values}",
        f"* layout {recipe['layout']}; all of it is in `config.json` under `input`",
    ]
    if results is not None:
        text += ["", *_results_section(results)]
    return "\n".join(text) + "\n"


def _results_section(results: dict[str, Any]) -> list[str]:
    protocol = results.get("protocol", {})
    splits = ", ".join(str(s["split"]) for s in results.get("per_split", []))
    return [
        "## Results",
        "",
        f"`distinit eval` on {results['dataset']} (split {splits or results.get('split')}), "
        f"mode {results['mode']}, {protocol.get('epochs')} epochs, "
        f"{results.get('clips_per_video')} clips per video:",
        "",
        "| " + " | ".join(m.replace("_", " ") for m in METRICS) + " |",
        "|" + "---|" * len(METRICS),
        "| " + " | ".join(f"{100 * results[m]:.1f}%" for m in METRICS) + " |",
    ]


def _stored_frames(shard_fps: float | None) -> str:
    """What one stored frame is: the shards' ``--fps`` sampling when the checkpoint recorded
    it; otherwise every native frame (or, for checkpoints that predate the record, unknown)."""
    if shard_fps is not None:
        return f"(the shards kept {shard_fps:g} frames per second of video)"
    return "(every native frame, unless the shards were extracted with `--fps`)"
