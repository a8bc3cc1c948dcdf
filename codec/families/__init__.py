"""Model families behind one interface (:mod:`codec.families.base`).

- :mod:`codec.families.landmark`: geometry from facial landmarks and an analytic warp
  (the default; works without any training).
- :mod:`codec.families.vid2vid`: the paper's learned-keypoint networks (trainable, no
  weights yet).

Import the family modules directly: this package stays light (numpy only).
"""

from codec.families.base import ModelFamily, MotionLayout, MotionTracker, TalkingHeadModel, ViewControl

__all__ = ["ModelFamily", "MotionLayout", "MotionTracker", "TalkingHeadModel", "ViewControl"]
