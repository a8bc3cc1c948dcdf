"""The sending side of a call: frame sources, face tracking, encoding; the WebRTC call
layer comes later."""
