"""A tabular risk model whose evaluation cannot be trusted. torchdoctor's second example.

The training loop is clean; the science is not: the test rows shape the preprocessing, pick
the checkpoint, and the numbers it prints are optimistic. Runs on CPU in a few seconds.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FEATURES = 12
RESULTS_DIR = "/home/alice/experiments/risk"  # planted: absolute path baked into the code


def load_table(rows: int = 2000):
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(rows, FEATURES, generator=generator)
    x[:, 0] = x[:, 0] * 20 + 45  # an age-like column on its own scale
    logits = 0.08 * (x[:, 0] - 45) + x[:, 1] - 0.5 * x[:, 2]
    y = (logits + 0.3 * torch.randn(rows, generator=generator) > 0).float()
    return x, y


def standardize(x):
    mean = x.mean(dim=0)
    std = x.std(dim=0)
    return (x - mean) / std  # planted: no epsilon, a constant column gives NaN


class RiskNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(FEATURES, 64),
            nn.BatchNorm1d(64),  # planted: the Linear above keeps a useless bias
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.Linear(64, 1),  # planted: two Linear layers with no activation between
        )

    def forward(self, x):
        return self.layers(x).squeeze(1)


def accuracy(model, loader) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for xb, yb in loader:
            correct += ((model(xb) > 0).float() == yb).sum().item()
    return correct / len(loader.dataset)


def main() -> None:
    torch.manual_seed(0)
    x, y = load_table()
    x = standardize(x)  # planted: statistics computed on every row, test rows included
    n_test = len(x) // 5
    x_train, y_train = x[n_test:], y[n_test:]
    x_test, y_test = x[:n_test], y[:n_test]
    train_loader = DataLoader(
        TensorDataset(x_train, y_train), batch_size=64, shuffle=True, num_workers=2
    )  # planted: workers share one RNG seed, and re-spawn every epoch
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=256)

    model = RiskNet()
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2)
    best = 0.0
    for epoch in range(5):
        model.train()
        for xb, yb in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
        test_accuracy = accuracy(model, test_loader)
        if test_accuracy > best:  # planted: the test set picks the checkpoint
            best = test_accuracy
            torch.save(model, "best_model.pt")  # planted: pickles the whole module
        print(f"epoch {epoch}: test accuracy {test_accuracy:.3f}")
    print(f"best test accuracy {best:.3f} (saved under {RESULTS_DIR})")


if __name__ == "__main__":
    main()
