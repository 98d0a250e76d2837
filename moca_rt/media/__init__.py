"""Media sources: video files, network streams, AVSBench folders and image + audio pairs.

Every source yields :class:`MediaFrame` records: one RGB image and the 2 s of 16 kHz mono audio
centred on its presentation time (DESIGN section 5). Containers and streams are decoded on a
background thread; audio is kept in a ring buffer keyed by presentation time, never by sample
count, because AAC priming/padding and dropped packets shift sample counts against the clock.

Time frame: ``MediaFrame.pts`` and every audio timestamp are seconds on the container's own
clock (the same clock for video and audio; files start near 0, an MPEG-TS stream may start
anywhere). Audio sample ``i`` of a window for a frame at time ``t`` sits at
``t - window_s / 2 + i / 16000``.

Decisions (documented in docs/design.md):

* Rate conversion to 16 kHz uses the windowed-sinc kernel of ``moca_rt.preprocess.resample``
  (torchaudio's defaults) applied block-wise, with filter-width context on both sides of
  blocks aligned to the filter phase, so the streamed result equals a whole-signal resample
  (what the official ImageBind loader does to a file; 2e-6 from the reference's torchaudio
  output). The convolution runs in numpy on the decoder thread: tiny torch or BLAS-GEMM calls
  there paid 10-100x in thread barriers on a busy machine. ``resampler="swr"``
  (libswresample via ``av.AudioResampler``) is faster for 44.1 kHz input but differs from
  torchaudio (RMS 4e-3 on white noise), so it is an option, not the default.
* Channels are mixed by the mean, before rate conversion (both are linear, so the order does
  not change the result); ``mix="first"`` keeps channel 0 like the official ImageBind fbank.
* AVSBench folders (``visual_frames/<vid>/<vid>_k.png`` + ``audio_wav/<vid>.wav``): frame k
  (0-based) is taken at ``t = k + 0.5`` s, the centre of its second.
* With ``fps`` set, frames that are not selected are skipped and produce no record; selected
  frames keep their input index, so indices have gaps. Without ``fps`` every decoded frame is
  yielded. In real-time mode (network sources by default) frames the consumer could not take
  in time are still yielded, as records with ``dropped=True`` and no image or audio.
* A decode error never hides frames: every decodable frame is yielded first, then the error
  is stored in ``source.error`` and (unless ``raise_on_error=False``) raised as
  :class:`MediaDecodeError` when the iteration ends, so a CLI can write all outputs and exit
  non-zero.
"""

from moca_rt.av_audio import audio_frame_to_float
from moca_rt.config import SAMPLE_RATE, WINDOW_SECONDS
from moca_rt.errors import (
    MediaDecodeError,
    MediaError,
    MediaNotFoundError,
    MediaOpenError,
    NoAudioStreamError,
    NoVideoStreamError,
)
from moca_rt.media.audio import AudioRing, load_audio_16k
from moca_rt.media.opener import SourceKind, open_source, source_kind
from moca_rt.media.reconnect import ReconnectingSource
from moca_rt.media.sources import (
    ContainerSource,
    ImageSequenceSource,
    MediaSource,
    find_avsbench_audio,
    gt_mask_name,
    is_network_url,
    open_avsbench,
    open_image_audio,
)
from moca_rt.media.types import (
    IMAGE_SUFFIXES,
    NETWORK_SCHEMES,
    AudioChunk,
    AudioResamplerName,
    ChannelMix,
    MediaFrame,
    SourceStats,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "NETWORK_SCHEMES",
    "SAMPLE_RATE",
    "WINDOW_SECONDS",
    "AudioChunk",
    "AudioResamplerName",
    "AudioRing",
    "ChannelMix",
    "ContainerSource",
    "ImageSequenceSource",
    "MediaDecodeError",
    "MediaError",
    "MediaFrame",
    "MediaNotFoundError",
    "MediaOpenError",
    "MediaSource",
    "NoAudioStreamError",
    "NoVideoStreamError",
    "ReconnectingSource",
    "SourceKind",
    "SourceStats",
    "audio_frame_to_float",
    "find_avsbench_audio",
    "gt_mask_name",
    "is_network_url",
    "load_audio_16k",
    "open_avsbench",
    "open_image_audio",
    "open_source",
    "source_kind",
]
