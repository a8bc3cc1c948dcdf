"""CLI: ``python -m training {train,evaluate} ...`` (``main(argv) -> int`` for tests).

train     one time-boxed chunk (see training.trainer); works under torchrun.
evaluate  dev evaluation of a weights file next to the frozen-keyframe baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one time-boxed chunk")
    t.add_argument("--config", default="vox256", help="model config name (codec.config.CONFIGS)")
    t.add_argument("--data", type=Path, required=True,
                   help="training dataset root (cache/train256), or a video file / folder of videos")
    t.add_argument("--dev", type=Path, default=None,
                   help="dev set (cache/dev256) or a video file for the chunk-end evaluation")
    t.add_argument("--out", type=Path, required=True, help="run folder (state.pt, log.csv, ...)")
    t.add_argument("--minutes", type=float, required=True, help="train this long, then save")
    t.add_argument("--batch", type=int, default=4, help="batch per process")
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--lr-d", type=float, default=None, help="discriminator lr (default: --lr)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/state.pt exactly")
    t.add_argument("--init-from", type=Path, default=None,
                   help="folder with model.safetensors + discriminator.safetensors "
                        "(optimizer moments restart)")
    t.add_argument("--amp", choices=("bf16", "fp16", "none"), default=None,
                   help="autocast dtype (default bf16 on CUDA, none on CPU)")
    t.add_argument("--channels-last", action="store_true")
    t.add_argument("--compile", action="store_true")
    t.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    t.add_argument("--perceptual-backbone", choices=("vgg",), default="vgg",
                   help="network of the perceptual loss: the converted VGG16")
    t.add_argument("--gan-start-step", type=int, default=0)
    t.add_argument("--max-steps", type=int, default=None, help="stop the run at this global step")
    t.add_argument("--chunk-steps", type=int, default=None, help="stop this chunk after N steps")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--dev-frames", type=int, default=250)
    t.add_argument("--dev-clips", type=int, default=None)
    t.add_argument("--no-eval", action="store_true", help="skip the chunk-end dev evaluation")
    t.add_argument("--dataset-length", type=int, default=None,
                   help="pairs per epoch (video-file data, or passed to PairDataset)")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (1 avoids oversubscription on shared CPUs)")
    t.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True)")
    for name, default in (("perceptual", 10.0), ("gan", 1.0), ("feature-matching", 10.0),
                          ("equivariance", 20.0), ("keypoint-prior", 10.0), ("head-pose", 20.0),
                          ("deformation-prior", 5.0)):
        t.add_argument(f"--w-{name}", type=float, default=default, help=f"loss weight ({default})")

    e = sub.add_parser("evaluate", help="dev evaluation of a weights file")
    e.add_argument("--weights", type=Path, required=True)
    e.add_argument("--dev", type=Path, required=True)
    e.add_argument("--frames", type=int, default=250)
    e.add_argument("--out", type=Path, default=None)
    e.add_argument("--clips", type=int, default=None, help="only the first N clips")
    e.add_argument("--device", default=None)
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--no-lpips", action="store_true")
    e.add_argument("--no-akd", action="store_true")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "train":
        from training.losses import LossWeights
        from training.trainer import TrainConfig, train

        weights = LossWeights(
            perceptual=args.w_perceptual, gan=args.w_gan, feature_matching=args.w_feature_matching,
            equivariance=args.w_equivariance, keypoint_prior=args.w_keypoint_prior,
            head_pose=args.w_head_pose, deformation_prior=args.w_deformation_prior)
        result = train(TrainConfig(
            out=args.out, data=args.data, config=args.config, dev=args.dev, minutes=args.minutes,
            batch=args.batch, lr=args.lr, lr_d=args.lr_d, resume=args.resume,
            init_from=args.init_from, amp=args.amp, channels_last=args.channels_last,
            compile=args.compile, workers=args.workers, seed=args.seed, device=args.device,
            perceptual_backbone=args.perceptual_backbone, weights=weights,
            gan_start_step=args.gan_start_step, max_steps=args.max_steps,
            chunk_steps=args.chunk_steps, log_every=args.log_every, dev_frames=args.dev_frames,
            dev_clips=args.dev_clips, eval_at_end=not args.no_eval,
            dataset_length=args.dataset_length, deterministic=args.deterministic,
            threads=args.threads))
        logging.getLogger("training").info(
            "stopped by %s at step %d (%d steps this chunk)", result.stopped_by, result.step,
            result.steps_this_chunk)
        return 0
    if args.command == "evaluate":
        import torch

        from codec.weights_io import load_weights_file
        from training.evaluate import evaluate_model

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        loaded = load_weights_file(args.weights, device=device)
        report = evaluate_model(loaded.network, args.dev, frames=args.frames, out_dir=args.out,
                                device=device, batch=args.batch, max_clips=args.clips,
                                use_lpips=not args.no_lpips, use_akd=not args.no_akd)
        print(json.dumps({"average": report["average"], "notes": report["notes"]}, indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
