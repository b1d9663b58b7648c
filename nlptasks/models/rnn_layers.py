"""The recurrent layers every recurrent model builds on: Elman RNN, LSTM, GRU and peephole LSTM.

torch has no peephole LSTM (Gers & Schmidhuber 2000: the gates also read the cell state), so it
is written here as a time-step loop; the other cells are torch's fused ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

LSTMState = tuple[torch.Tensor, torch.Tensor]


class PeepholeLSTM(nn.Module):
    """An LSTM whose input, forget and output gates also see the cell state (diagonal peepholes).

    Same constructor and state layout as `nn.LSTM` (batch first only); called through `packed_rnn`
    with a mask, so padding never changes a row's state.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        batch_first: bool = True,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if not batch_first:
            raise ValueError("PeepholeLSTM reads batch-first tensors only")
        self.num_layers = num_layers
        self.directions = 2 if bidirectional else 1
        self.layer_dropout = nn.Dropout(dropout)
        self.cells = nn.ModuleList(
            PeepholeCell(input_size if layer == 0 else hidden_size * self.directions, hidden_size)
            for layer in range(num_layers)
            for _ in range(self.directions)
        )

    def reset_parameters(self) -> None:
        for cell in self.cells:
            cell.reset_parameters()

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, LSTMState]:
        """States (batch, seq, directions * hidden), zero on padding; the final (h, c) laid out as `nn.LSTM`'s."""
        reverse = _reversal_index(mask)
        finals_h, finals_c = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.directions):
                cell = self.cells[layer * self.directions + direction]
                states, (h, c) = cell(inputs if direction == 0 else _reordered(inputs, reverse), mask)
                outputs.append(states if direction == 0 else _reordered(states, reverse))
                finals_h.append(h)
                finals_c.append(c)
            inputs = torch.cat(outputs, -1)
            if layer < self.num_layers - 1:
                inputs = self.layer_dropout(inputs)
        return inputs, (torch.stack(finals_h), torch.stack(finals_c))


class PeepholeCell(nn.Module):
    """One direction of one layer: i, f, o gates with peepholes (o reads the new cell state)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_weights = nn.Linear(input_size, 4 * hidden_size)
        self.hidden_weights = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.peepholes = nn.Parameter(torch.empty(3, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's LSTM init: every weight ~ U(-1/sqrt(hidden), 1/sqrt(hidden))."""
        bound = 1 / math.sqrt(self.peepholes.shape[1])
        for weight in (self.input_weights.weight, self.input_weights.bias, self.hidden_weights.weight, self.peepholes):
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, LSTMState]:
        batch, length, _ = inputs.shape
        projected = self.input_weights(inputs)  # every time step's input part at once
        h = inputs.new_zeros(batch, self.peepholes.shape[1])
        c = torch.zeros_like(h)
        peep_input, peep_forget, peep_output = self.peepholes
        states = []
        for t in range(length):
            i, f, g, o = (projected[:, t] + self.hidden_weights(h)).chunk(4, -1)
            new_c = torch.sigmoid(f + peep_forget * c) * c + torch.sigmoid(i + peep_input * c) * torch.tanh(g)
            new_h = torch.sigmoid(o + peep_output * new_c) * torch.tanh(new_c)
            keep = mask[:, t, None]
            h, c = torch.where(keep, new_h, h), torch.where(keep, new_c, c)
            states.append(new_h * keep)
        return torch.stack(states, 1), (h, c)


def _reversal_index(mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, 1) positions that reverse each row's unpadded part and leave its padding in place."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    lengths = mask.sum(1, keepdim=True)
    return torch.where(positions < lengths, lengths - 1 - positions, positions).unsqueeze(-1)


def _reordered(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`values` (batch, seq, size) taken at `positions` (batch, seq, 1) along the sequence."""
    return values.gather(1, positions.expand(-1, -1, values.shape[-1]))


LAYERS: dict[str, Any] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU, "peephole-lstm": PeepholeLSTM}
"""RNN cells a recurrent recipe may use (`rnn` is Elman's tanh RNN), with their layer classes."""
CELLS = tuple(LAYERS)


def recurrent_layer(
    cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = True
) -> nn.Module:
    """A batch-first (stacked, optionally bidirectional) RNN of `cell`; dropout only between layers."""
    return LAYERS[cell](
        input_size,
        hidden_size,
        num_layers=num_layers,
        dropout=dropout if num_layers > 1 else 0.0,
        batch_first=True,
        bidirectional=bidirectional,
    )


def packed_rnn(rnn: nn.Module, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """`rnn` states (batch, seq, directions * hidden) for right-padded rows, and its final state.

    Padding never enters the RNN, so the final state is each row's own last token's (an LSTM's is (h, c)).
    """
    if isinstance(rnn, PeepholeLSTM):
        return rnn(inputs, mask)
    lengths = mask.sum(1).clamp(min=1).cpu()
    states, final = rnn(pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False))
    return pad_packed_sequence(states, batch_first=True, total_length=inputs.shape[1])[0], final
