"""Metrics that work offline, shared by tasks and RAG, each computed by the library that defines it.

One module per family: `entities` (seqeval entity F1), `classification` (accuracy and F1,
scikit-learn), `rouge` (rouge-score, several references, the greedy oracle), `bleu` (sacreBLEU's
BLEU and chrF with signatures), `correlation` (STS, scipy) and `squad` (exact match and token F1,
the official script's few lines, which no maintained library packages without a download).
Scores are on a 0-1 scale except sacreBLEU's and the STS correlations, 0-100 as published.
Nothing is imported here, so a task loads only the libraries of its own metric.
"""
