"""Representation analysis: do perturbed instructions move the model's representation of an input?

For the same examples of one task (the paper: 300 CoLA inputs) under every instruction variant,
the representation is the pooled last-token hidden state: `CoinModel(lm)(ids, mask)` gives the
final-norm hidden states of the prompt (`encode(..., response="")`, right-padded), and the state
of the last real token (the last position where the attention mask is 1) is taken; this is the
`prompt_last` pooling of training.

Reported: the mean cosine similarity between an example's representation under clean instruction
i and under each perturbed variant of instruction i, per level and per attack (semantic variants
pair with clean instruction i by position), and a 2-D projection of all representations (PCA by
default; UMAP with `projection="umap"`, or `"auto"` when umap-learn is installed) to plot coloured
by level, as the paper's Figure 4.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from coin.data_tools.prompt import PromptFormat, encode

from .instructions import InstructionSet
from .loaders import TaskData
from .runner import plan_batches, run_sharded
from .tasks import LEVELS, render_prompt

LEVEL_COLOURS = {"clean": "#222222", "character": "#d62728", "word": "#1f77b4", "sentence": "#2ca02c",
                 "semantic": "#9467bd"}


@torch.no_grad()
def pooled_representations(model, tokenizer, fmt: PromptFormat, prompts: Sequence[str], *, max_length: int = 512,
                           device: torch.device | None = None) -> torch.Tensor:
    """[len(prompts), hidden] float32 CPU: the final-norm hidden state of each prompt's last real token."""
    from coin.training.model import CoinModel

    device = device or next(model.parameters()).device
    seqs = [encode(tokenizer, fmt, p, "", max_length)[0] for p in prompts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    hidden = CoinModel(model)(ids.to(device), mask.to(device))
    positions = torch.arange(width, device=device)
    last = (mask.to(device) * positions).argmax(dim=1)  # the last position whose mask is 1
    return hidden[torch.arange(len(seqs), device=device), last].float().cpu()


def project_2d(x: torch.Tensor, method: str = "auto", seed: int = 42) -> tuple[list[float], list[float], str]:
    """2-D coordinates of the rows of x: PCA (deterministic signs) or UMAP."""
    if method in ("auto", "umap"):
        try:
            import umap  # optional: umap-learn

            emb = umap.UMAP(n_components=2, random_state=seed).fit_transform(x.double().numpy())
            return emb[:, 0].tolist(), emb[:, 1].tolist(), "umap"
        except ImportError:
            if method == "umap":
                from coin.errors import CoinError

                raise CoinError("--projection umap: umap-learn is not installed (pip install umap-learn)") from None
    xc = x.double() - x.double().mean(0, keepdim=True)
    if xc.shape[0] < 2:
        return [0.0] * xc.shape[0], [0.0] * xc.shape[0], "pca"
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = vh[:2]
    # fix each component's sign: its largest-magnitude loading positive
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * signs
    proj = xc @ comps.T
    if proj.shape[1] < 2:
        proj = torch.cat([proj, torch.zeros_like(proj)], 1)
    return proj[:, 0].tolist(), proj[:, 1].tolist(), "pca"


def representation_analysis(model, tokenizer, task: TaskData, instructions: InstructionSet, *,
                            prompt_format: PromptFormat | None = None, n_examples: int = 300,
                            projection: str = "auto", seed: int = 42, max_length: int = 512, batch_size: int = 32,
                            progress: bool = True, device: torch.device | None = None) -> dict:
    """Cosine similarity clean vs perturbed per level/attack, and a 2-D projection (sharded over ranks)."""
    fmt = prompt_format or PromptFormat()
    spec = task.spec
    examples = task.examples[:n_examples] if n_examples else task.examples
    variants = instructions.for_task(spec.name)
    items = [(v, e) for v in range(len(variants)) for e in range(len(examples))]
    prompts = [render_prompt(spec, variants[v].text, examples[e]) for v, e in items]
    batches = plan_batches([list(range(len(items)))], [len(p) for p in prompts], batch_size)
    model.eval()

    def run_batch(batch):
        reps = pooled_representations(model, tokenizer, fmt, [prompts[i] for i in batch], max_length=max_length,
                                      device=device)
        return list(reps)

    out = run_sharded(batches, run_batch, desc=f"representations ({spec.name})", progress=progress)
    reps = torch.stack([out[i] for i in range(len(items))])
    n = len(examples)
    by_key = {variants[v].key: reps[v * n:(v + 1) * n] for v in range(len(variants))}
    cos_level: dict[str, list[float]] = {}
    cos_attack: dict[str, list[float]] = {}
    for ins in variants:
        if ins.attack == "clean" or f"clean/{ins.index}" not in by_key:
            continue
        c = torch.nn.functional.cosine_similarity(by_key[f"clean/{ins.index}"], by_key[ins.key], dim=1).tolist()
        cos_level.setdefault(ins.level, []).extend(c)
        cos_attack.setdefault(ins.attack, []).extend(c)
    xs, ys, method = project_2d(reps, projection, seed)
    return {
        "task": spec.name,
        "n_examples": n,
        "n_instructions": len(variants),
        "pooling": "last real prompt token, final-norm hidden state",
        "mean_cosine": {lv: sum(cos_level[lv]) / len(cos_level[lv]) for lv in LEVELS if lv in cos_level},
        "mean_cosine_by_attack": {k: sum(v) / len(v) for k, v in cos_attack.items()},
        "projection": {
            "method": method,
            "x": xs, "y": ys,
            "level": [variants[v].level for v, _ in items],
            "attack": [variants[v].attack for v, _ in items],
            "instruction": [variants[v].key for v, _ in items],
            "example": [e for _, e in items],
        },
    }


def plot_representations(analyses: Mapping[str, dict], path: str) -> str:
    """One scatter per model, side by side, points coloured by perturbation level; one legend for
    the figure, above the panels (clear of the points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, a in analyses.items() if a and a.get("projection")]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5.5 * max(1, len(names)), 5.6), squeeze=False)
    handles = {}
    for ax, name in zip(axes[0], names):
        a = analyses[name]
        p = a["projection"]
        for lv in LEVELS:
            idx = [i for i, l in enumerate(p["level"]) if l == lv]
            if idx:
                handles[lv] = ax.scatter([p["x"][i] for i in idx], [p["y"][i] for i in idx], s=8, alpha=0.6,
                                         c=LEVEL_COLOURS[lv], label=lv)
        cos = ", ".join(f"{k} {v:.3f}" for k, v in a.get("mean_cosine", {}).items() if not math.isnan(v))
        ax.set_title(f"{name}: {a['task']}, mean cosine to clean\n{cos}", fontsize=9)
        axis = "PC" if p["method"] == "pca" else p["method"].upper()
        ax.set_xlabel(f"{axis} 1", fontsize=10)
        ax.set_ylabel(f"{axis} 2", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    levels = [lv for lv in LEVELS if lv in handles]
    ncol = len(levels) if len(names) > 1 else 3  # one panel: two legend rows fit its width
    fig.legend([handles[lv] for lv in levels], levels, loc="upper center", ncol=ncol, frameon=False, fontsize=10,
               markerscale=2, title="instruction", title_fontsize=9)
    rows = -(-len(levels) // ncol)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.45 + 0.3 * rows) / fig.get_figheight()))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
