"""A learner's training loop, written the way many first loops are: it has a bug.

A character-level GRU reads a long text in chunks of SEQ characters and carries its hidden
state from one chunk to the next (so it can remember across chunk boundaries). Ask the
doctor what is wrong with it:

    python -m mahiax doctor examples/my_loop.py:train_step --steps 4

The top level builds the data, the model and the optimiser; ``train_step(i)`` trains on
chunk ``i``. (Spoiler, for after you ran it: the fix is one ``.detach()``.)
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
VOCAB, EMB, HID, SEQ, BATCH = 32, 16, 32, 20, 8  # characters, widths, chunk length, streams
text = torch.randint(0, VOCAB, (BATCH, SEQ * 50 + 1))  # (BATCH, N): BATCH parallel streams


class CharRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMB)
        self.rnn = nn.GRU(EMB, HID, batch_first=True)
        self.head = nn.Linear(HID, VOCAB)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None):
        out, h = self.rnn(self.embed(x), h)  # (BATCH, SEQ, HID), (1, BATCH, HID)
        return self.head(out), h  # (BATCH, SEQ, VOCAB)


model = CharRNN()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
hidden = None  # the GRU's state, carried from chunk to chunk
running_loss = 0.0


def train_step(i: int) -> None:
    global hidden, running_loss
    x = text[:, i * SEQ:(i + 1) * SEQ]  # (BATCH, SEQ)
    y = text[:, i * SEQ + 1:(i + 1) * SEQ + 1]  # the next character of each position
    logits, hidden = model(x, hidden)  # the bug: hidden keeps this chunk's graph
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    running_loss += loss.item()


if __name__ == "__main__":
    for i in range(50):
        train_step(i)
    print(f"mean loss {running_loss / 50:.3f}")
