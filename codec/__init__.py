"""Neural talking-head video codec after face vid2vid (Wang et al., CVPR 2021).

The sender codes one keyframe, then per frame only the head rotation, translation
and expression deltas. The receiver rebuilds each frame with the generator.

Heavy and I/O modules (PyAV, constriction, dlib) are imported where they are used,
so that ``codec.models`` and the trainer import with torch, numpy and OpenCV alone; torch
in turn loads only with a network (the landmark refiner, the vid2vid family), so the API
and the default landmark warp run without it (tests/test_imports.py).
"""

__version__ = "0.1.0"
