"""`s7 export`: a classifier as one ONNX file that takes raw pixels.

Input "image": uint8 RGB, NHWC (N, 32, 32, 3), values 0-255, the batch axis dynamic: what an image reader
gives, so a user needs onnxruntime and nothing of this project. Normalisation by the per-channel mean and
std the weights were trained with (their own metadata, as `s7 evaluate` uses) is inside the graph.
Output "logits": (N, classes), no TTA. The class names, mean and std are in the model's metadata.

Exporter: torch.onnx.export's dynamo (torch.export-based) exporter, torch's default and the maintained one
(the TorchScript exporter is deprecated since torch 2.9); it needs onnxscript and takes several seconds.
`--int8`: onnxruntime.quantization's static quantisation (QDQ: uint8 activations, per-channel int8
weights, onnxruntime's choice for x86 CPUs), calibrated on training images, so it needs --data. Dynamic
quantisation was tried first: its ConvInteger kernels ran s7 about 10x slower than fp32 on this CPU.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import platform
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

INPUT, OUTPUT = "image", "logits"
CALIBRATION_IMAGES = 1000
# What a user runs, shown in the README and executed as it stands by tests/test_export.py.
USAGE = """\
import numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession("s7.onnx")
image = np.asarray(Image.open("cat.png").convert("RGB").resize((32, 32), Image.BILINEAR))[None]  # uint8 NHWC
logits = session.run(None, {"image": image})[0]
print(session.get_modelmeta().custom_metadata_map["classes"].split(",")[logits.argmax()])
"""


class PixelClassifier(nn.Module):
    """uint8 NHWC pixels -> logits: the net behind `trainer.loop.normalize` (the same arithmetic)."""

    def __init__(self, net: nn.Module, mean_pixels: Sequence[float], std_pixels: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean_pixels, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_pixels, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net((image.permute(0, 3, 1, 2).float() - self.mean) / self.std)


def export_onnx(model: nn.Module, meta: dict, path: Path) -> Path:
    """Write `model` (eval mode) with its normalisation as one ONNX file with a dynamic batch axis and the
    class names, mean and std in its metadata."""
    import onnx

    net = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # the caller's model stays as it was
    wrapped = PixelClassifier(net, meta["mean"], meta["std"]).eval()
    example = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        torch.onnx.export(wrapped, (example,), str(path), dynamo=True, external_data=False,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
    proto = onnx.load(str(path))
    info = {"model": meta["model"], "classes": ",".join(meta["classes"]),
            "mean": json.dumps([float(v) for v in meta["mean"]]), "std": json.dumps([float(v) for v in meta["std"]]),
            "input": "image: uint8 RGB NHWC (N, 32, 32, 3), 0-255; normalisation is inside the graph",
            "output": "logits: (N, classes), no TTA"}
    del proto.metadata_props[:]
    for k, v in info.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    return path


def quantize_int8(fp32: Path, int8: Path, calibration: np.ndarray) -> Path:
    """Static int8 quantisation of an exported file, calibrated on uint8 NHWC images (MinMax ranges of
    every activation over them), after onnxruntime's recommended pre-processing (shape inference and graph
    optimisation; it made s7's int8 file a third smaller at the same accuracy)."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT: calibration[i:i + 100]} for i in range(0, len(calibration), 100)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # it prints protos
        prepared = str(Path(tmp) / "prepared.onnx")
        quant_pre_process(str(fp32), prepared)
        quantize_static(prepared, str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return int8


def session(path: Path, threads: int = 0):
    """An onnxruntime CPU session (`threads` 0: onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_logits(sess, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits of uint8 NHWC images from an onnxruntime session of an exported file."""
    return np.concatenate([sess.run(None, {INPUT: images[i:i + batch_size]})[0]
                           for i in range(0, len(images), batch_size)])


def _timed(sess, feed: dict, repeats: int) -> list[float]:
    sess.run(None, feed)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return times


def latency(path: Path, image: np.ndarray, batch: np.ndarray, repeats: int = 300) -> dict:
    """CPU timings with one onnxruntime thread: ms for one image (the best and the median of `repeats`) and
    images/s over `batch` (the best of 5). The best is what the CPU can do when nothing else runs; the
    median also holds the waits of a shared machine."""
    sess = session(path, threads=1)
    one = _timed(sess, {INPUT: image[None]}, repeats)
    many = _timed(sess, {INPUT: batch}, 5)
    return {"batch1_best_ms": 1000 * min(one), "batch1_median_ms": 1000 * float(np.median(one)),
            "batch_images_per_s": len(batch) / min(many), "batch_size": len(batch)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(files: dict[str, Path], model: nn.Module, meta: dict, test_x: np.ndarray, test_y: np.ndarray,
            source: str) -> dict:
    """Size, test accuracy, agreement with PyTorch (largest logit difference, argmax matches) and CPU
    latency of each exported file, with PyTorch's own accuracy beside them and where it was measured."""
    from trainer.tools.evaluate import logits_batches

    reference = logits_batches(model, test_x, meta["mean"], meta["std"])
    load_before = os.getloadavg()[0]
    rows = {"pytorch fp32": {"accuracy": 100.0 * float((reference.argmax(1) == test_y).mean())}}
    for name, path in files.items():
        logits = onnx_logits(session(path), test_x)
        rows[name] = {"file": path.name, "bytes": path.stat().st_size,
                      "accuracy": 100.0 * float((logits.argmax(1) == test_y).mean()),
                      "max_abs_logit_diff": float(np.abs(logits - reference).max()),
                      "argmax_matches": int((logits.argmax(1) == reference.argmax(1)).sum()),
                      **latency(path, test_x[0], test_x[:500])}
    return {"model": meta["model"], "data": source, "test_images": int(len(test_y)), "rows": rows,
            "machine": f"{_cpu_name()}, {os.cpu_count()} cores, onnxruntime {_ort_version()}, 1 thread for timings",
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def measurement_markdown(m: dict, folder: Path | None = None) -> str:
    """The fp32/int8 table of a `measure` result; the file sizes are read from the ONNX files in `folder` when
    they are there (the files a reader gets), else taken from the measurement."""
    lines = ["| model | file size | test accuracy | largest logit difference to PyTorch | argmax as PyTorch | "
             "latency, 1 image: best (median) | throughput, batch 500 |", "|---|---|---|---|---|---|---|"]
    for name, r in m["rows"].items():
        if "file" not in r:
            lines.append(f"| {name} | – | {r['accuracy']:.2f}% | – | – | – | – |")
            continue
        size = (folder / r["file"]).stat().st_size if folder and (folder / r["file"]).is_file() else r["bytes"]
        lines.append(f"| {name} (`{r['file']}`) | {size / 1024:,.0f} KiB | {r['accuracy']:.2f}% | "
                     f"{r['max_abs_logit_diff']:.2g} | {r['argmax_matches']:,}/{m['test_images']:,} | "
                     f"{r['batch1_best_ms']:.2f} ms ({r['batch1_median_ms']:.2f} ms) | "
                     f"{r['batch_images_per_s']:,.0f} img/s |")
    return "\n".join(lines)


EXTRA = "onnx"  # pyproject.toml's optional dependencies that export, quantise and run the file


def require_onnx_extras(runtime: bool) -> None:
    """Import what the export needs (onnx, onnxscript; with `runtime` also onnxruntime, for --int8 and
    --data), or a ValueError naming the missing package and the extra that installs it."""
    import importlib

    for module in ("onnx", "onnxscript") + (("onnxruntime",) if runtime else ()):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"s7 export needs {e.name or module}, which is not installed: install the "
                             f"{EXTRA!r} extra (pip install 's7[{EXTRA}]')") from None


def export_command(path: str, onnx_path: str, int8: bool, model_name: str | None, data: str | None,
                   data_dir: str) -> int:
    """`s7 export`: write the ONNX file (and with --int8 its quantised twin); with --data, measure both on the
    test split and write the figures to FILE.json beside it."""
    from trainer.dataset import subset
    from trainer.tools.evaluate import data_source, load_classifier, load_matching_data

    out = Path(onnx_path)  # its suffix and place are checked by the command line (cli.Output)
    if int8 and data is None:
        raise ValueError("--int8 calibrates on training images: give --data")
    require_onnx_extras(runtime=data is not None)
    model, meta = load_classifier(path, model_name)
    d = None if data is None else load_matching_data(path, meta, data, data_dir)  # bad --data: nothing written
    files = {"onnx fp32": export_onnx(model, meta, out)}
    print(f"wrote {out} ({out.stat().st_size / 1024:,.0f} KiB): input {INPUT} uint8 (N, 32, 32, 3) RGB 0-255, "
          f"output {OUTPUT} (N, {len(meta['classes'])})")
    if d is None:
        return 0
    if int8:
        calib, _ = subset(d.train_x, d.train_y, CALIBRATION_IMAGES)
        q = quantize_int8(out, out.with_suffix(".int8.onnx"), calib)
        files["onnx int8"] = q
        print(f"wrote {q} ({q.stat().st_size / 1024:,.0f} KiB), static int8, calibrated on {len(calib)} "
              "training images")
    m = measure(files, model, meta, d.test_x, d.test_y, data_source(d.source, data))
    report = out.with_suffix(".json")
    report.write_text(json.dumps(m, indent=2) + "\n")
    print(measurement_markdown(m))
    print(f"wrote {report}")
    return 0
