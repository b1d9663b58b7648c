"""A CRF over the labelled positions of a token sequence (words' first tokens), for any tagger's emissions.

`torchcrf` scores and decodes sequences whose mask starts with 1 and has no holes; a tagger's
labelled positions have holes (subword continuations, special tokens), so they are moved to the
left of each row first. Decoding returns the Viterbi path as logits the NER task's shared
softmax/argmax/window-averaging decoding reads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torchcrf import CRF
from transformers.modeling_outputs import TokenClassifierOutput

from nlptasks.tasks.base import NOT_CHOSEN


class Tagger:
    """What a token classifier with an optional CRF (`crf`) shares: its outputs from the tag scores."""

    crf: CRF | None
    training: bool

    @property
    def scores_are_paths(self) -> bool:
        """A CRF's outputs are its Viterbi path, not probabilities: no temperature can calibrate them."""
        return self.crf is not None

    def tag_outputs(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor | None,
        word_starts: torch.Tensor | None,
    ) -> TokenClassifierOutput:
        """The loss and the logits the NER task decodes: cross-entropy and the scores without a CRF; with one, its
        likelihood, and in evaluation its Viterbi path over the words' first tokens (from the tokenizer; the
        labelled positions where it gave none)."""
        if self.crf is None:
            loss = None if labels is None else nn.functional.cross_entropy(emissions.flatten(0, 1), labels.flatten())
            return TokenClassifierOutput(loss=loss, logits=emissions)
        loss = None if labels is None else crf_loss(self.crf, emissions, labels)
        if self.training:
            return TokenClassifierOutput(loss=loss, logits=emissions)
        labelled = mask if labels is None else labels != -100
        decode = labelled if word_starts is None else word_starts.bool()
        return TokenClassifierOutput(loss=loss, logits=viterbi_logits(self.crf, emissions, decode & mask))


def crf_loss(crf: CRF, emissions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled positions (-100 ones removed, the rest moved left)."""
    order, compact, rows, scores = _compacted(emissions, labels != -100)
    if not rows.any():
        return emissions.sum() * 0.0
    tags = labels.gather(1, order)[rows].masked_fill(~compact, 0)
    with torch.autocast(emissions.device.type, enabled=False):
        return -crf(scores.float(), tags, mask=compact, reduction="mean")


def viterbi_logits(crf: CRF, emissions: torch.Tensor, decode: torch.Tensor) -> torch.Tensor:
    """The Viterbi path over the `decode` positions as one-hot-like logits (0 chosen, NOT_CHOSEN others; 0 where
    nothing is decoded)."""
    order, compact, rows, scores = _compacted(emissions, decode)
    logits = torch.zeros_like(emissions)
    if not rows.any():
        return logits
    with torch.autocast(emissions.device.type, enabled=False):
        paths = crf.decode(scores.float(), mask=compact)
    for row, path in zip(rows.nonzero().flatten().tolist(), paths):
        positions = order[row, : len(path)]
        logits[row, positions] = NOT_CHOSEN
        logits[row, positions, torch.tensor(path, device=logits.device)] = 0.0
    return logits


def _compacted(
    emissions: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kept positions moved to the left of each row, as a CRF wants them (its mask must start with 1).

    Returns the position order, the compact mask and emissions of rows with any kept position, and those rows.
    """
    order, compact = kept_first(keep)
    rows = compact[:, 0]
    scores = emissions.gather(1, order.unsqueeze(-1).expand(-1, -1, emissions.shape[-1]))[rows]
    return order, compact[rows], rows, scores


def kept_first(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's positions with the kept ones first, in order, and which of those slots hold a kept one.

    Cut to the most any row keeps (at least one), except in an export, which keeps every position: a graph
    cannot size a tensor by a count of its inputs. An argsort of unique keys, as ONNX has no stable sort.
    """
    positions = torch.arange(keep.shape[1], device=keep.device)
    order = torch.argsort(positions + (~keep).long() * (positions[-1:] + 1), dim=1)
    counts = keep.sum(1, keepdim=True)
    if not torch.compiler.is_exporting():
        order = order[:, : int(counts.max().clamp(min=1))]
    return order, torch.arange(order.shape[1], device=keep.device) < counts
