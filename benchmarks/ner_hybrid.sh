#!/usr/bin/env bash
# The hybrid NER tagger (MiniLM + character CNN + CRF) on CoNLL-2003 and its two ablations, one after
# another on a quiet machine: each run's test F1 per type, validation F1 and training seconds as a table.
#   bash benchmarks/ner_hybrid.sh            (runs/ner-minilm-charcnn-crf, runs/ner-ablation-{chars,crf}-only)
set -euo pipefail
cd "$(dirname "$0")/.."
export NLPTASKS_DATA_DIR=${NLPTASKS_DATA_DIR:-../shared/data}
.venv/bin/nlptasks run ner/minilm-charcnn-crf
.venv/bin/nlptasks run ner/minilm-charcnn-crf --set model_args.crf=false --set output_dir=runs/ner-ablation-chars-only
.venv/bin/nlptasks run ner/minilm-charcnn-crf --set model_args.char_encoder=false --set output_dir=runs/ner-ablation-crf-only
.venv/bin/python - <<'PY'
import json
from pathlib import Path

print("| run | test F1 | PER | LOC | ORG | MISC | validation F1 | train s |")
print("|---|---|---|---|---|---|---|---|")
for run in ("ner-minilm-charcnn-crf", "ner-ablation-chars-only", "ner-ablation-crf-only"):
    metrics = json.loads((Path("runs") / run / "metrics.json").read_text())
    test = metrics["test"]
    types = " | ".join(f"{test[f'f1_{kind}']:.3f}" for kind in ("PER", "LOC", "ORG", "MISC"))
    print(f"| {run} | {test['f1']:.4f} | {types} | {metrics['validation']['f1']:.4f} | {metrics['train']['train_runtime']:.0f} |")
PY
