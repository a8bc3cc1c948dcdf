"""The receiving side of a call.

- :mod:`receiver.session`: control messages and motion packets -> ``codec.api.Decoder`` on a
  bounded render thread (loss handling, keyframe and intra requests, live stats);
- :mod:`receiver.frames`: the newest-frame holder the sinks read;
- :mod:`receiver.sinks`: MP4 recording with the peer's audio;
- :mod:`receiver.window`: a window, where a display exists;
- :mod:`receiver.viewer`: the local web viewer (WebRTC to the browser, stats, free-view sliders).

Files are decoded with ``facecodec decompress`` (``codec.files.decompress``).
"""
