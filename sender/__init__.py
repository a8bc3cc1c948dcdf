"""The sending side of a call.

- :mod:`sender.sources`: frames from a camera, a video file (optionally looping) or the built-in
  default (a public-domain portrait under a scripted camera path);
- :mod:`sender.session`: face crop and tracking, the codec's Encoder, neural/H.264 modes;
- :mod:`sender.media_tracks`: the low-rate H.264 RTP track (around ``codec.media.h264``'s PyAV
  encoder) and the PCM audio track;
- :mod:`sender.microphone`: the microphone as an audio track.
"""
