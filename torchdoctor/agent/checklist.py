"""The audit checklist as data: 5 phases, 12 points, 50 items (English and French titles).

This module is the single source of the checklist. Rules say which items they cover
(`Rule.items`); the non-rule checks (sandbox probes, peer linters, review) are listed here
in `Item.checks`. `checks_for(item_id)` joins both.
"""

from __future__ import annotations

from dataclasses import dataclass

PHASE_OF_POINT: dict[int, int] = {
    1: 1,
    2: 1,
    3: 2,
    4: 2,
    5: 3,
    6: 4,
    7: 4,
    8: 4,
    9: 5,
    10: 5,
    11: 5,
    12: 5,
}


@dataclass(frozen=True)
class Phase:
    number: int
    points: tuple[int, ...]
    title_en: str
    title_fr: str


@dataclass(frozen=True)
class Point:
    number: int
    title_en: str
    title_fr: str

    @property
    def phase(self) -> int:
        return PHASE_OF_POINT[self.number]


@dataclass(frozen=True)
class Item:
    id: str
    point: int
    title_en: str
    title_fr: str
    checks: tuple[str, ...] = ()
    """Non-rule checks covering this item: `probe:<name>`, `tool:<name>`, `review`."""

    @property
    def phase(self) -> int:
        return PHASE_OF_POINT[self.point]

    def title(self, lang: str = "en") -> str:
        return self.title_fr if lang == "fr" else self.title_en


PHASES: tuple[Phase, ...] = (
    Phase(1, (1, 2), "Correctness and robustness", "Exactitude et robustesse"),
    Phase(
        2, (3, 4), "Scientific validity and algorithmic logic", "Validité scientifique et logique"
    ),
    Phase(3, (5,), "Tests and reproducibility", "Tests et reproductibilité"),
    Phase(4, (6, 7, 8), "Performance, deployment and cost", "Performance, déploiement et coût"),
    Phase(
        5,
        (9, 10, 11, 12),
        "Architecture, idioms, security, responsible AI",
        "Architecture, idiomes, sécurité, IA responsable",
    ),
)

POINTS: tuple[Point, ...] = (
    Point(1, "Technical correctness", "Exactitude technique"),
    Point(2, "Robustness", "Robustesse"),
    Point(3, "Scientific validity", "Validité scientifique"),
    Point(4, "Algorithmic logic", "Logique algorithmique"),
    Point(5, "Tests and reproducibility", "Tests et reproductibilité"),
    Point(6, "CPU/GPU performance and scalability", "Performance CPU/GPU et passage à l'échelle"),
    Point(7, "Inference and deployment", "Inférence et déploiement"),
    Point(8, "Energy and cost", "Énergie et coût"),
    Point(9, "Architecture", "Architecture"),
    Point(10, "Idioms", "Idiomes"),
    Point(11, "Security and supply chain", "Sécurité et chaîne d'approvisionnement"),
    Point(12, "Responsible AI", "IA responsable"),
)

ITEMS: tuple[Item, ...] = (
    # Point 1 — technical correctness
    Item(
        "1.1",
        1,
        "Syntax, type hints and signatures",
        "Syntaxe, annotations de type et signatures",
        ("tool:mypy", "tool:ruff"),
    ),
    Item(
        "1.2", 1, "Tensor typing (jaxtyping) suggested", "Typage des tenseurs (jaxtyping) suggéré"
    ),
    Item(
        "1.3",
        1,
        "Data-flow map of shapes, dtypes and devices",
        "Carte des formes, types et périphériques des tenseurs",
        ("probe:dataflow-map",),
    ),
    Item(
        "1.4",
        1,
        "Memory leaks (RAM/VRAM, retain_graph, graph retention)",
        "Fuites mémoire (RAM/VRAM, retain_graph, rétention du graphe)",
        ("probe:memory",),
    ),
    Item(
        "1.5",
        1,
        "dtype inconsistencies (float32/float16/bfloat16)",
        "Incohérences de dtype (float32/float16/bfloat16)",
        ("probe:dataflow-map",),
    ),
    Item(
        "1.6",
        1,
        "Compatibility with PyTorch 2.8 and CUDA 12.8",
        "Compatibilité avec PyTorch 2.8 et CUDA 12.8",
        ("tool:torchfix", "probe:warnings"),
    ),
    # Point 2 — robustness
    Item("2.1", 2, "Strict input validation", "Validation stricte des entrées"),
    Item(
        "2.2", 2, "Explicit exception handling", "Gestion explicite des exceptions", ("tool:ruff",)
    ),
    Item(
        "2.3",
        2,
        "Edge cases (empty batch, NaN/Inf, gradients)",
        "Cas limites (lot vide, NaN/Inf, gradients)",
        ("probe:nan",),
    ),
    Item("2.4", 2, "Clean handling of CUDA OOM", "Gestion propre des OOM CUDA"),
    # Point 3 — scientific validity
    Item("3.1", 3, "Data leakage", "Fuite de données"),
    Item(
        "3.2",
        3,
        "Consistency with the research paper / stated method",
        "Cohérence avec l'article / la méthode annoncée",
        ("review",),
    ),
    Item(
        "3.3",
        3,
        "Numerical stability (gradient and activation magnitudes)",
        "Stabilité numérique (magnitudes des gradients et activations)",
        ("probe:gradients", "probe:activations", "probe:loss"),
    ),
    Item(
        "3.4",
        3,
        "Statistically sound validation metrics",
        "Métriques de validation statistiquement solides",
    ),
    # Point 4 — algorithmic logic
    Item("4.1", 4, "Redundant computation", "Calculs redondants"),
    Item("4.2", 4, "Algorithmic complexity", "Complexité algorithmique"),
    Item(
        "4.3",
        4,
        "Correct gradient propagation",
        "Propagation correcte des gradients",
        ("probe:gradients",),
    ),
    # Point 5 — tests and reproducibility
    Item(
        "5.1",
        5,
        "Seeds fixed and propagated (incl. DataLoader workers)",
        "Graines fixées et propagées (y compris workers du DataLoader)",
        ("probe:determinism",),
    ),
    Item(
        "5.2",
        5,
        "Testability (pure functions, unit tests)",
        "Testabilité (fonctions pures, tests unitaires)",
    ),
    Item(
        "5.3",
        5,
        "ML-specific tests (metamorphic, robustness)",
        "Tests spécifiques au ML (métamorphiques, robustesse)",
    ),
    Item(
        "5.4",
        5,
        "Continuous validation (drift detection)",
        "Validation continue (détection de dérive)",
    ),
    # Point 6 — performance
    Item(
        "6.1",
        6,
        "Host-device syncs: .item()/.cpu()/.numpy() in loops",
        "Synchronisations hôte-GPU : .item()/.cpu()/.numpy() dans les boucles",
        ("probe:syncs",),
    ),
    Item(
        "6.2",
        6,
        "CUDA/cuDNN backends (cudnn.benchmark, matmul precision)",
        "Backends CUDA/cuDNN (cudnn.benchmark, précision des matmul)",
    ),
    Item("6.3", 6, "torch.compile", "torch.compile", ("probe:compile",)),
    Item("6.4", 6, "bf16 AMP on bf16-capable GPUs", "AMP bf16 sur les GPU compatibles"),
    Item("6.5", 6, "Fused optimizers", "Optimiseurs fusionnés"),
    Item("6.6", 6, "DataLoader tuning", "Réglage du DataLoader", ("probe:dataloader",)),
    Item("6.7", 6, "VRAM fragmentation", "Fragmentation de la VRAM", ("probe:memory",)),
    Item("6.8", 6, "DDP/FSDP configuration", "Configuration DDP/FSDP"),
    # Point 7 — inference and deployment
    Item(
        "7.1",
        7,
        "Export (torch.export/ONNX; TorchScript is legacy)",
        "Export (torch.export/ONNX ; TorchScript est obsolète)",
        ("probe:export",),
    ),
    Item(
        "7.2", 7, "INT8 quantization potential", "Potentiel de quantification INT8", ("probe:int8",)
    ),
    Item("7.3", 7, "Inference compilers (TensorRT)", "Compilateurs d'inférence (TensorRT)"),
    Item("7.4", 7, "eval() mode at inference", "Mode eval() à l'inférence", ("probe:mode",)),
    # Point 8 — energy and cost
    Item("8.1", 8, "Achieved TFLOP/s and MFU", "TFLOP/s atteints et MFU", ("probe:flops",)),
    Item(
        "8.2", 8, "torch.compile cost vs gain", "Coût et gain de torch.compile", ("probe:compile",)
    ),
    Item("8.3", 8, "Data storage format", "Format de stockage des données"),
    # Point 9 — architecture
    Item("9.1", 9, "SOLID/DRY/KISS/YAGNI", "SOLID/DRY/KISS/YAGNI", ("review",)),
    Item(
        "9.2",
        9,
        "Decoupling of config, data, model and training",
        "Découplage de la configuration, des données, du modèle et de l'entraînement",
    ),
    Item(
        "9.3",
        9,
        "No hard-coded hyperparameters or paths",
        "Pas d'hyperparamètres ni de chemins codés en dur",
    ),
    Item(
        "9.4",
        9,
        "Quality tooling (ruff, mypy)",
        "Outillage qualité (ruff, mypy)",
        ("tool:ruff", "tool:mypy"),
    ),
    Item(
        "9.5",
        9,
        "Design patterns (strategy, factory) where they pay",
        "Patrons de conception (stratégie, fabrique) quand ils paient",
        ("review",),
    ),
    # Point 10 — idioms
    Item("10.1", 10, "Pythonic PyTorch", "PyTorch idiomatique", ("tool:ruff",)),
    Item("10.2", 10, "Single responsibility", "Responsabilité unique"),
    Item(
        "10.3",
        10,
        "Explicit over implicit, no magic numbers",
        "Explicite plutôt qu'implicite, pas de nombres magiques",
    ),
    # Point 11 — security and supply chain
    Item("11.1", 11, "Vulnerable dependencies", "Dépendances vulnérables", ("tool:pip-audit",)),
    Item(
        "11.2",
        11,
        "Safe model loading (safetensors, torch.load(weights_only=True))",
        "Chargement sûr des modèles (safetensors, torch.load(weights_only=True))",
        ("tool:bandit",),
    ),
    Item(
        "11.3", 11, "No hard-coded secrets", "Pas de secrets codés en dur", ("tool:detect-secrets",)
    ),
    # Point 12 — responsible AI
    Item("12.1", 12, "Bias analysis", "Analyse des biais"),
    Item(
        "12.2", 12, "Explainability hooks (Captum, SHAP)", "Points d'explicabilité (Captum, SHAP)"
    ),
    Item("12.3", 12, "Model cards", "Fiches de modèle (model cards)"),
)

ITEMS_BY_ID: dict[str, Item] = {item.id: item for item in ITEMS}
POINTS_BY_NUMBER: dict[int, Point] = {point.number: point for point in POINTS}


def items_of_point(point: int) -> tuple[Item, ...]:
    return tuple(item for item in ITEMS if item.point == point)


def phase_of_point(point: int) -> int:
    return PHASE_OF_POINT[point]


def point_title(point: int, lang: str = "en") -> str:
    p = POINTS_BY_NUMBER[point]
    return p.title_fr if lang == "fr" else p.title_en


def checks_for(item_id: str) -> tuple[str, ...]:
    """Every check covering an item: rules that declare it, then the item's own checks."""
    from torchdoctor.agent.checks.registry import (
        all_rules,  # local import: checks depend on this module
    )

    rule_ids = tuple(f"rule:{r.id}" for r in all_rules() if item_id in r.items)
    return rule_ids + ITEMS_BY_ID[item_id].checks
