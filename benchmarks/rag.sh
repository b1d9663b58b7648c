#!/usr/bin/env bash
# RAG benchmarks with the default recipe (MiniLM-L6 + BM25 hybrid, SmolLM2 answers), JSON per step in $OUT:
#   Cranfield retrieval (dense / BM25 / hybrid), SQuAD v1.1 dev open-domain QA (all 2,067 paragraphs
#   indexed, Recall@k over 10,570 questions, answers of 200 held-out questions by SmolLM2 and by a QA
#   run's extractive reader when runs/qa-minilm exists). Indexes are rebuilt from scratch each time.
set -euo pipefail
cd "$(dirname "$0")/.."
export NLPTASKS_DATA_DIR=${NLPTASKS_DATA_DIR:-../shared/data}
OUT=${OUT:-runs/rag-bench}
READER=${READER:-runs/qa-minilm}
rm -rf "$OUT" && mkdir -p "$OUT"
nlptasks() { /usr/bin/time -f "%e s, peak RSS %M KB" .venv/bin/nlptasks "$@"; }
nlptasks rag eval --index "$OUT/cranfield" --benchmark cranfield > "$OUT/cranfield.json"
nlptasks rag eval --index "$OUT/squad" --benchmark squad --answers 200 > "$OUT/squad-smollm2.json"
if [ -f "$READER/recipe.yaml" ]; then
  nlptasks rag eval --index "$OUT/squad" --benchmark squad --answers 200 --set "generator=$READER" > "$OUT/squad-reader.json"
fi
tail -n +1 "$OUT"/*.json
