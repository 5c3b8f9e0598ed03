"""Make a run's shipped weights the net's `models/weights/<model>.safetensors` (what
`timm.create_model(name, pretrained=True)` loads), stamped with the committed copy of the run they came from
("run", which the README builder and the tests read) and the dataset named as the README names it.

    .venv/bin/python scripts/ship_weights.py runs/NAME results/NAME --data-label "JPEG q75 copy of CIFAR-10 (../shared/data/cifar10-jpeg.tar.gz)"

results/ holds run folders less their weights, so the weights come from the run folder itself; refused unless
the committed copy lies under results/ with the same metrics rows and ships the same epoch. `--as NAME` ships a
candidate's run as the registered net it became (refused unless both build the same layout). Then rerun
`make shipped-results`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ship(run: Path, committed: Path, data_label: str, weights_dir: Path, results: Path = ROOT / "results",
         as_name: str | None = None) -> Path:
    """Copy RUN/model/model.safetensors to weights_dir/<model>.safetensors with meta "run" (the committed copy,
    as results/<name> under the repository's `results` folder) and "data" set; with `as_name`, as that net's
    weights (meta "model" = as_name, "trained_as" = the run's model), refused unless both build the same layout."""
    import timm

    import models  # noqa: F401  (registers the nets)
    from trainer.checkpoint import load_weights, save_weights
    from trainer.runfolder import WEIGHTS_DIR
    from trainer.tools.results import run_results

    if as_name is not None and not timm.is_model(as_name):
        raise SystemExit(f"error: --as {as_name}: not a registered net")
    try:
        relative = committed.resolve().relative_to(results.resolve())
    except ValueError:
        raise SystemExit(f"error: {committed}: not a run folder under {results}") from None
    state, meta = load_weights(run / WEIGHTS_DIR / "model.safetensors")
    live, copy = run_results(run), run_results(committed)  # each refuses a model/ the selection rule did not ship
    if live["rows"] != copy["rows"] or meta.get("epoch") != copy["selected_epoch"]:
        raise SystemExit(f"error: {committed} is not a copy of {run} (other metrics rows or shipped epoch)")
    meta = {**meta, "run": f"results/{relative.as_posix()}", "data": data_label}
    model = timm.create_model(meta["model"], num_classes=len(meta["classes"]))
    if as_name is not None and as_name != meta["model"]:
        # The modules' reprs name every layer's kind, channels, kernel, stride, dilation and padding.
        if repr(timm.create_model(as_name, num_classes=len(meta["classes"]))) != repr(model):
            raise SystemExit(f"error: --as {as_name}: its layout is not {meta['model']}'s, the net {run} trained")
        meta = {**meta, "model": as_name, "trained_as": meta["model"]}
    model.load_state_dict(state)
    target = weights_dir / f"{meta['model']}.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        save_weights(model, Path(tmp), meta)
        shutil.move(str(Path(tmp) / "model.safetensors"), str(target))
    return target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the run folder, with its model/ weights")
    p.add_argument("committed", type=Path, help="its committed copy, results/<name>")
    p.add_argument("--data-label", required=True, help="the dataset as the README names it")
    p.add_argument("--weights-dir", type=Path, default=ROOT / "models" / "weights")
    p.add_argument("--as", dest="as_name", metavar="NAME",
                   help="ship a candidate's run as the registered net NAME it became (same layout required)")
    args = p.parse_args()
    target = ship(args.run, args.committed, args.data_label, args.weights_dir, as_name=args.as_name)
    print(f"shipped {target} from {args.run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
