#!/usr/bin/env bash
# RAG tuned on its own corpus, SQuAD v1.1 dev (all 2,067 paragraphs indexed), JSON per step in $OUT:
#   untuned.json  the default recipe's retrieval, Recall@k on all questions and on the held-out articles
#   tuned/tune.json  `rag tune` on the questions of squad_v1_dev_split's training articles: retrieval of its own
#                 held-out questions before and after, the tuned generator's held-out scores
#                 and the abstention threshold fitted on its held-out prompts
#   tuned.json    the tuned index end to end on 200 questions of the held-out articles (the same sample as
#                 rag.sh's): Recall@k, EM / F1, citation accuracy, abstention with the gold passage withheld
#   greedy.json   the same without the threshold: abstaining where greedy decoding says NOT_FOUND
# RETRIEVER_QUESTIONS and GENERATOR_QUESTIONS bound each training set (this CPU's budget); PROMPT_TOKENS
# is the prompt budget the generator is trained and asked with; UNANSWERABLE the share of its prompts
# stripped of the answer.
set -euo pipefail
cd "$(dirname "$0")/.."
export NLPTASKS_DATA_DIR=${NLPTASKS_DATA_DIR:-../shared/data}
OUT=${OUT:-runs/rag-tune-bench}
RETRIEVER_QUESTIONS=${RETRIEVER_QUESTIONS:-1200}
GENERATOR_QUESTIONS=${GENERATOR_QUESTIONS:-480}
PROMPT_TOKENS=${PROMPT_TOKENS:-640}
UNANSWERABLE=${UNANSWERABLE:-0.2}
rm -rf "$OUT" && mkdir -p "$OUT"
nlptasks() { /usr/bin/time -f "%e s, peak RSS %M KB" .venv/bin/nlptasks "$@"; }
nlptasks rag eval --index "$OUT/squad" --benchmark squad --answers 0 > "$OUT/untuned.json"
nlptasks rag tune --index "$OUT/squad" --questions "$NLPTASKS_DATA_DIR/qa/squad_v1_dev_split/train.jsonl" \
  --out "$OUT/tuned" --unanswerable "$UNANSWERABLE" --set "max_context_tokens=$PROMPT_TOKENS" \
  --set "retriever.data.max_train_samples=$RETRIEVER_QUESTIONS" \
  --set "generator.data.max_train_samples=$GENERATOR_QUESTIONS" --set generator.data.max_eval_samples=50 \
  > "$OUT/tune.log"
nlptasks rag eval --index "$OUT/tuned/index" --benchmark squad --answers 200 > "$OUT/tuned.json"
nlptasks rag eval --index "$OUT/tuned/index" --benchmark squad --answers 200 --set abstain_threshold=null \
  > "$OUT/greedy.json"
tail -n +1 "$OUT"/*.json "$OUT/tuned/tune.json"
