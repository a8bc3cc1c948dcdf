"""Rate–distortion benchmark: our codec against x264, VP8, VP9, SVT-AV1 and the frozen keyframe.

    python -m benchmarks.rd --manifest ../shared/data/talking/MANIFEST.tsv --split dev \
        --clips 10 --frames 250 --out out/rd --codecs ours,x264,vp8,vp9,av1,frozen

    python -m benchmarks.rd --folder my_videos/ --codecs x264,frozen --frames 100 --out out/mine

``--folder DIR`` alone benchmarks every video under DIR (recursively, sorted by path; each
clip is named by its path under DIR). With ``--manifest`` it only says where the manifest's
paths live. A run that scores no clip at all exits with status 2 and the reason.

Protocol (docs/DESIGN.md, "Measuring"): a square face crop fitted on the first 5 frames and
held fixed (as ``codec.files.compress`` does), 256×256 (512 where the source has the pixels,
with ``--size 512``), resampled to 25 fps, the first 250 frames. The crops are cached per
clip as .npy under the output folder, and every (codec, setting, clip) result is written to
``results.json`` as soon as it exists, so an interrupted run resumes where it stopped.

Bits counted:
- ours: stream header + every keyframe packet + every motion packet (payload kbit/s). The
  on-wire estimate is what a call with audio sends: the header, keyframes and patches as
  data-channel messages, ``DATA_CHANNEL_OVERHEAD_BYTES`` (93 B) per SCTP chunk of at most
  ``DATA_CHANNEL_CHUNK_BYTES``; each motion packet as a header extension element of an audio
  packet (``rtc.wire_cost.motion_on_audio_wire_bytes``: its bytes, a header byte, the padding).
  Each row's ``extra.wire_kbps_without_audio`` is a call without audio: one message a packet.
- x264 / VP8 / VP9 / AV1: the raw elementary stream the encoder emits (Annex-B for H.264,
  bare frames for VP8/VP9, low-overhead OBUs for AV1), no container. For x264 the one
  "user data unregistered" SEI carrying x264's version and options string (~600 B, in the
  first packet) is *excluded* from the counted bytes, because it carries no picture data and a
  real-time sender can drop it; excluding it only favours the baseline. Its size is stored
  (``x264_sei_bytes``) and ``kbps_with_sei`` gives the rate with it. On-wire adds
  ``SRTP_PACKET_OVERHEAD_BYTES`` (50 B) per RTP packet of at most ``RTP_MAX_PAYLOAD`` bytes.
- frozen keyframe: one WebP q90 keyframe (``codec.keyframe.encode_keyframe``), shown for
  every frame; on the wire, one data-channel message.

Metrics come from ``evaluation.metrics`` (PSNR on RGB, SSIM, MS-SSIM, LPIPS AlexNet v0.1, AKD and
AED from dlib), per frame, then per clip (mean over frames), then averaged over clips. AKD
skips the frames where dlib finds no face; ``akd_common`` is AKD over the frames where every
setting of the run (and the real frame) shows one, so settings are compared on the same pictures.

``--metric-every K`` (default 1) scores only frames 0, K, 2K, …: every codec still encodes
and decodes every frame, and the rates count every frame's bits, but the quality metrics
(and, for our codec, the generator call that rebuilds a frame) are spent on the sampled
frames only. Our decoder still parses every motion packet (the prediction chain needs it)
and renders only the sampled frames (``Decoder.decode_stream(render=...)``). Each row
records ``metric_every`` and ``scored_frames``.

Layout, one job a module: ``protocol`` (fixed choices, metric sampling), ``clips`` (clips and
their cached crops), ``runs`` (what a codec run yields), ``baselines`` (x264, VP8, VP9, AV1,
frozen keyframe), ``ours`` (our codec), ``scoring`` (per-frame metrics, a clip's row),
``curves`` (BD-rate, headline), ``results`` (results.json), ``plots``, ``markdown``
(summary.md), ``runner`` (the resumable sweep) and ``cli`` (flags and ``main``).
"""

from __future__ import annotations

from .baselines import _pyav_settings, run_frozen, run_pyav, x264_version_sei_bytes
from .cli import main, parse_args
from .clips import Clip, SkipClip, folder_clips, load_crops, manifest_clips, slug
from .curves import analysis, bd_rate, curves_by_codec, headline, rate_for_quality, value_at_rate
from .markdown import format_cell, markdown_summary, markdown_table
from .ours import ours_sweep, run_ours
from .plots import plot_all
from .protocol import (
    ALL_CODECS,
    FPS,
    LOWER_IS_BETTER,
    METRICS,
    UNTRAINED_MARK,
    metric_sampling_text,
    scored_indices,
)
from .results import ResultStore, average_rows
from .runs import CodecRun, Setting
from .scoring import MetricSuite, summarize

# _pyav_settings: the tests build x264's sweep through it.
__all__ = [
    "ALL_CODECS", "FPS", "LOWER_IS_BETTER", "METRICS", "UNTRAINED_MARK", "Clip", "CodecRun",
    "MetricSuite", "ResultStore", "Setting", "SkipClip", "_pyav_settings", "analysis",
    "average_rows", "bd_rate", "curves_by_codec", "folder_clips", "format_cell", "headline",
    "load_crops", "main", "manifest_clips", "markdown_summary", "markdown_table",
    "metric_sampling_text", "ours_sweep", "parse_args", "plot_all", "rate_for_quality",
    "run_frozen", "run_ours", "run_pyav", "scored_indices", "slug", "summarize", "value_at_rate",
    "x264_version_sei_bytes",
]
