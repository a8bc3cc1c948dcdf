"""Quality measurement shared by training and the benchmarks: PSNR/SSIM/AKD/AED metrics,
LPIPS (AlexNet v0.1) and the pretrained backbones behind it. Not part of the run-time codec."""
