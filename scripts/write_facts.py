"""One-off migration (issue 17): give each committed run folder under results/ the facts.json that the trainer now
writes, so the tools read numbers and never parse the project's text again.

The facts of a run made before facts.json existed are read, this once, from the text files it committed:
summary.txt ("Total params:"), receptive_field.md (the RF of its last row), rules.md (the rule table) and
train.log (the last "devices:" line). A folder that already has facts.json is left as it is.
Usage: python scripts/write_facts.py [RESULTS_DIR]
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer import runfolder  # noqa: E402

DEVICES_LINE = re.compile(r"devices: (\d+) x (.+?), DistributedType\.(\w+), precision (\w+)")


def legacy_facts(run: Path, model: str) -> dict:
    """facts.json's record from a pre-issue-17 run folder's text files; a fact a file lacks is None."""
    def text(name: str) -> str:
        return (run / name).read_text() if (run / name).is_file() else ""

    params = next((int(line.split(":")[1].replace(",", "")) for line in text(runfolder.SUMMARY).splitlines()
                   if line.startswith("Total params:")), None)
    rf_lines = [line for line in text(runfolder.RF_MD).splitlines() if line.startswith("|")]
    rf = int(rf_lines[-1].split("|")[-3]) if len(rf_lines) > 2 else None
    rules = [{"name": c[0], "required": c[1], "actual": c[2], "passed": c[3] == "PASS"}
             for c in ([x.strip() for x in line.strip().strip("|").split("|")]
                       for line in text(runfolder.RULES_MD).splitlines()[2:] if line.startswith("|"))
             if len(c) == 4]
    found = DEVICES_LINE.findall(text(runfolder.TRAIN_LOG))
    n, device, _, precision = found[-1] if found else (None, None, None, None)
    record = runfolder.facts(model, params or 0, rf or 0, rules, device, precision, int(n) if n else None)
    record.update(parameters=params, receptive_field=rf)
    if not rules:
        record["rules"] = record["rules_failed"] = None  # no rules.md: the run was never checked
    return record


def main(argv: list[str]) -> int:
    import yaml

    root = Path(argv[0]) if argv else REPO / "results"
    for metrics in sorted(root.rglob(runfolder.METRICS)):
        run = metrics.parent
        if (run / runfolder.FACTS).is_file():
            continue
        cfg = yaml.safe_load((run / runfolder.CONFIG).read_text()) if (run / runfolder.CONFIG).is_file() else {}
        record = legacy_facts(run, (cfg or {}).get("model") or runfolder.model_meta(run).get("model"))
        runfolder.write_facts(run, record)
        print(f"{run.relative_to(root)}: {record['parameters']} parameters, RF {record['receptive_field']}, "
              f"rules failed {record['rules_failed']}, device {record['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
