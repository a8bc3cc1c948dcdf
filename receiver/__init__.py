"""The receiving side of a call: the WebRTC layer that feeds packets to ``codec.api.Decoder``
and shows or records the rebuilt frames. The call layer is not built yet; files are decoded
with ``facecodec decompress`` (codec.api.decompress)."""
