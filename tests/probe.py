"""A spy on a training run's first step: what the net and the batch really were (memory format, autocast dtype,
batch size, learning rate, host-to-device copies, threads), so a test proves an option is applied, not only
parsed. In process: `probe(argv)`; in a process of its own (Accelerate fixes the precision once per process):
`python tests/probe.py OUT.json TRAINER-FLAGS...` writes the same dict to OUT.json."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import accelerate.data_loader  # noqa: E402

from trainer import main as trainer_main  # noqa: E402


def _channels_last(t: torch.Tensor) -> bool:
    """Strided as NHWC and not also as NCHW (a tensor can be both when C or H*W is 1)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def probe(argv: list[str]) -> tuple[int, dict]:
    """trainer.main.main(argv) in this process; returns its exit code and what its first step saw."""
    seen: dict = {}
    original_epoch, original_send = trainer_main.train_one_epoch, accelerate.data_loader.send_to_device

    def send(*args, **kwargs):
        seen.setdefault("non_blocking", kwargs.get("non_blocking", False))
        return original_send(*args, **kwargs)

    def epoch(accelerator, model, loader, optimizer, *args, **kwargs):
        if "batch" not in seen:
            net = accelerator.unwrap_model(model, keep_torch_compile=False)
            stem = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
            device = accelerator.device.type

            def before(module, inputs):
                if "batch" not in seen:
                    x = inputs[0]
                    seen.update(batch=x.shape[0], input_dtype=str(x.dtype), input_channels_last=_channels_last(x),
                                weight_channels_last=_channels_last(stem.weight),
                                autocast=torch.is_autocast_enabled(device),
                                autocast_dtype=str(torch.get_autocast_dtype(device)),
                                threads=torch.get_num_threads(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                                max_lr=optimizer.param_groups[0]["max_lr"],
                                compiled=type(model).__name__ == "OptimizedModule")

            def after(module, inputs, output):
                seen.setdefault("conv_output_dtype", str(output.dtype))  # what the first conv computed in

            hooks = [net.register_forward_pre_hook(before), stem.register_forward_hook(after)]
            try:
                return original_epoch(accelerator, model, loader, optimizer, *args, **kwargs)
            finally:
                for h in hooks:
                    h.remove()
        return original_epoch(accelerator, model, loader, optimizer, *args, **kwargs)

    old = signal.getsignal(signal.SIGTERM)
    try:
        with mock.patch.object(trainer_main, "train_one_epoch", epoch), \
                mock.patch.object(accelerate.data_loader, "send_to_device", send):
            rc = trainer_main.main(argv)
    finally:
        signal.signal(signal.SIGTERM, old)
    return rc, seen


if __name__ == "__main__":
    rc, seen = probe(sys.argv[2:])
    Path(sys.argv[1]).write_text(json.dumps(seen))
    sys.exit(rc)
