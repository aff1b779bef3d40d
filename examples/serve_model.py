"""Serving a trained classifier: load, predict, export. torchdoctor's third example.

Deployment code written the quick way: it works on a laptop, and it is unsafe, slow and
fragile in production. Runs on CPU in a second (it trains nothing; it saves and reloads).
"""

import torch
from torch import nn

HUB_TOKEN = "hf_kV9pQ2xLmN4rT7wZ1yB3cD5eF6gH8jK0aS"  # planted: a credential in the source


class TextClassifier(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 64, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab, dim)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        return self.head(self.dropout(self.embed(tokens)))


def load_model(path: str) -> nn.Module:
    return torch.load(path)  # planted: unpickles arbitrary code from the file


def predict(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    # planted: the model is never put in eval mode, so dropout stays active
    with torch.no_grad():
        return model(tokens).softmax(dim=-1)


def export(model: nn.Module, example: torch.Tensor) -> None:
    traced = torch.jit.trace(model, example)  # planted: TorchScript for a new deployment
    traced.save("classifier.ts")
    torch.onnx.export(model, (example,), "classifier.onnx")  # planted: legacy exporter
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    torch.save(quantized.state_dict(), "classifier-int8.pt")


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.save(TextClassifier(), "classifier.pt")
    model = load_model("classifier.pt")
    batch = torch.randint(0, 1000, (8, 16))
    print(predict(model, batch).argmax(dim=-1).tolist())
