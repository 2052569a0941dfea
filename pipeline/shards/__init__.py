"""The shard contract between stage one and stage two. The only package that touches h5py.

A shard directory holds complete ``*.h5`` files (each written on disk under a temporary name as
its rows come and renamed when closed, so a crash never leaves a half-written shard under a final
name) and a ``manifest.json`` index regenerated from them after each run. The shard files are the
truth: a resumed run scans them, so a run killed before writing the manifest loses nothing it
finished.

Layout of one shard (``SCHEMA_VERSION`` 3)::

    attrs  format="distinit-shard", schema_version, provenance (JSON), teachers (JSON list)
    /frames/time           float64 (N,)    seconds from the video's first frame
    /frames/index          int64   (N,)    native frame index (decode order)
    /logits/<teacher>/q    int8    (K, N, C)  per-frame affine quantised logits of each view
    /logits/<teacher>/scale, /offset  float32 (K, N)   logit = q * scale + offset
    /embeddings/<teacher>/q, /scale, /offset   the same encoding for embedding targets (K, N, D)
    /views                 the views (absent: one view, the teacher's own centre recipe): attrs
                           size (the student's frame WxH), crop (see pipeline/views.py)
    /views/store_box       int64   (K, 4)  x0, y0, x1, y1 of view k in the student's frame
    /views/flip            uint8   (K,)    1 where view k is mirrored left-right
    /store                 the frame store (absent with ``--frames none``): attrs format (JSON,
                           see pipeline/framestore.py)
    /store/bytes           uint8   (B,)    H.264 GOPs, one after another
    /store/gop_row         int64   (G,)    first row of each GOP (a GOP never spans two videos)
    /store/gop_offset      int64   (G+1,)  GOP g is bytes[gop_offset[g]:gop_offset[g+1]]
    /videos/<field>        one entry per video: id (path relative to --videos), status, error,
                           row_start, row_count, native_frames, duration, width, height, fps
    /videos/source_box     float32 (V, K, 4)  view k's box in video v's source pixels (with views)

Row r of the store is the frame whose targets are row r (of every view). Schema 1 shards (no
store) and schema 2 shards (targets ``(N, C)``, the teacher's recipe only) are still read;
stage two then decodes schema 1's frames from the source videos.

Logits, not probabilities, are stored so the temperature stays a training-time choice. Per-frame
int8 quantisation costs about 1 KB per frame for a 1000-class teacher; every chunk carries a
fletcher32 checksum so bit-rot is detected when read.

A teacher target has a ``kind`` (:class:`TeacherInfo`): ``"logits"`` (the class scores, under
``/logits``) or ``"embedding"`` (the teacher's pooled image embedding, under ``/embeddings``; its
``num_classes`` is the embedding's dimension and it has no class names). One teacher may give both;
its targets are then told apart by :attr:`TeacherInfo.key` (``name`` for logits,
``name:embedding`` for the embedding). The same per-row affine int8 encoding serves both kinds:
``1 + 8/D`` bytes per dimension, a cosine similarity to fp32 above 0.999 on real frames.

Modules: ``contract`` (names, versions, the teacher and video records), ``codec`` (the int8
encoding), ``writer`` (one shard), ``header`` (one shard's attributes and video table, checked),
``reader`` (:class:`ShardSet`, a directory), ``handles`` (the files a process keeps open),
``manifest`` (the directory's index).
"""

# The public names of the contract; each lives in the module that owns it.
from distinit.pipeline.shards.codec import dequantize, quantize
from distinit.pipeline.shards.contract import (
    FORMAT_NAME,
    MANIFEST_NAME,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    SHARD_SUFFIX,
    TARGET_GROUPS,
    TMP_SUFFIX,
    Targets,
    TeacherInfo,
    VideoRecord,
    target_key,
)
from distinit.pipeline.shards.handles import MAX_OPEN_SHARDS, default_max_open
from distinit.pipeline.shards.header import (
    ShardHeader,
    damaged_shard,
    list_shard_files,
    read_failure,
    read_shard_header,
    video_records,
)
from distinit.pipeline.shards.manifest import write_manifest
from distinit.pipeline.shards.reader import ShardSet
from distinit.pipeline.shards.writer import ShardWriter

__all__ = [
    "FORMAT_NAME",
    "MANIFEST_NAME",
    "MAX_OPEN_SHARDS",
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "SHARD_SUFFIX",
    "TARGET_GROUPS",
    "TMP_SUFFIX",
    "ShardHeader",
    "ShardSet",
    "ShardWriter",
    "Targets",
    "TeacherInfo",
    "VideoRecord",
    "damaged_shard",
    "default_max_open",
    "dequantize",
    "list_shard_files",
    "quantize",
    "read_failure",
    "read_shard_header",
    "target_key",
    "video_records",
    "write_manifest",
]
