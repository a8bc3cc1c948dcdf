"""What the numbers depend on: code and library versions, the device (CUDA name, TF32
settings) or CPU, threads and the machine's load."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from benchmarks.env import cpu_name, git_state


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        **git_state(), "torch": torch.__version__, "python": platform.python_version(),
        "device": device.type, "threads": torch.get_num_threads(), "cpu": cpu_name(),
        "platform": platform.platform(),
        # the dev machine's 2 cores are shared: a high load average explains noisy CPU rows
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   # fp32 eager on CUDA uses TF32 convolutions by default: say so
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        env["device_name"] = env["cpu"]
    return env

