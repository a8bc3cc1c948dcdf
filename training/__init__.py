"""Training of the face vid2vid model: dataset, pretrained loss backbones, losses, trainer.

Everything on the training path imports with torch, numpy and OpenCV alone (the
accelerator machine has no PyAV, aiortc or constriction); the dataset *builder*, which
runs on a developer machine, is the one exception and imports PyAV lazily.
"""
