"""A small classifier trainer, written in a hurry. torchdoctor's bundled example.

It runs (on CPU in a few seconds) and looks plausible, yet it carries a dozen planted
problems across the checklist; `torchdoctor audit examples/train_buggy.py` finds them.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class Classifier(nn.Module):
    def __init__(self, features: int = 20, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(64, classes)
        self.aux = nn.Linear(64, 1)

    def forward(self, x):
        hidden = self.body(x)
        return self.head(hidden), self.aux(hidden)


def make_data(n: int = 512, features: int = 20):
    x = torch.randn(n, features)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def evaluate(model, loader):
    # planted: no model.eval() and no torch.no_grad() on the evaluation path
    correct = 0
    for x, y in loader:
        logits, _ = model.forward(x)  # planted: forward() called directly
        correct += (logits.argmax(dim=1) == y).sum().item()
    return correct / len(loader.dataset)


def train(epochs: int = 2) -> None:
    # planted: no seed anywhere
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    aux_criterion = nn.BCELoss()
    loader = DataLoader(make_data(), batch_size=32, shuffle=True)
    val_loader = DataLoader(make_data(128), batch_size=64)
    running_loss = 0.0
    for epoch in range(epochs):
        for step, (x, y) in enumerate(loader):
            logits, aux = model(x)
            probs = F.softmax(logits, dim=1)
            loss = criterion(probs, y)  # planted: softmax fed to CrossEntropyLoss
            aux_target = (y > 1).float().unsqueeze(1)
            aux_loss = aux_criterion(torch.sigmoid(aux), aux_target)  # planted: sigmoid + BCELoss
            total = loss + 0.1 * aux_loss
            total.backward(retain_graph=True)  # planted: retain_graph in the loop
            optimizer.step()  # planted: gradients never cleared
            running_loss += total  # planted: keeps every step's graph alive
            print(f"epoch {epoch} step {step} loss {total.item():.4f}")  # planted: sync every step
        accuracy = evaluate(model, val_loader)
        print(f"epoch {epoch}: accuracy {accuracy:.3f}")
    torch.save(model.state_dict(), "classifier.pt")
    state = torch.load("classifier.pt")  # planted: weights_only not set
    model.load_state_dict(state)


if __name__ == "__main__":
    train()
