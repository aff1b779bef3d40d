"""torchdoctor: audit PyTorch code along a 12-point checklist, with evidence."""

__version__ = "0.1.0"
