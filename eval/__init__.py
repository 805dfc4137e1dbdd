"""coin.eval: robustness of instruction following under perturbed instructions (docs/eval.md).

Modules, each one job:

    tasks        task specs (input format, label words), built-in instructions, prompt rendering
    loaders      GLUE data from local JSONL/Parquet/TSV/CSV (users' layouts detected) or the hub; the subset
    perturb      the seven attack types, seeded and offline (wordnet: the WordNet reader they use)
    instructions instruction sets: the JSON format, the generator, `--instructions` resolution
    promptbench  PromptBench's published prompt files
    scoring      batched (calibrated) label-likelihood ranking and greedy generation with parsing
    runner       the sharded evaluation loop (`evaluate`, `evaluate_models`)
    metrics      accuracy, population std over instructions, consistency, majority class, answer shares
    report       results.json, predictions.jsonl, report.md, PNG plots
    analysis     pooled last-token representations: cosine to clean, 2-D projection
    run          the `coin eval` command

The Python API, for the pipeline and small experiments:

    from coin.eval import (get_task, load_task_data, resolve_instructions, evaluate,
                           evaluate_models, representation_analysis, write_report)
    specs = {t: get_task(t) for t in ("sst2", "cola")}
    tasks = [load_task_data(s, "data/glue", n_examples=300, seed=42) for s in specs.values()]
    iset = resolve_instructions("generated", specs, seed=42)
    results = evaluate_models(["runs/coin/hf", "runs/sft/hf"], tasks, iset, representation_task="cola")
    write_report(results, "runs/eval")
"""
from .analysis import plot_representations, pooled_representations, representation_analysis
from .instructions import (
    Instruction, InstructionSet, check_requested_attacks, generate_instruction_set, load_instruction_file,
    parse_attacks, resolve_instructions,
)
from .loaders import DataError, TaskData, column_mappings, load_task_data, save_examples, select_subset
from .metrics import summarize_model, summarize_task
from .perturb import Perturbation, perturb
from .promptbench import parse_adv_markdown, promptbench_instruction_set
from .report import load_results, markdown_report, write_report
from .runner import evaluate, evaluate_models
from .scoring import check_label_words, content_free_priors, generate_texts, label_scores, parse_prediction
from .tasks import ATTACKS, GLUE_TASKS, LEVELS, TASKS, TaskSpec, get_task, parse_tasks, register_task, render_prompt

__all__ = [
    "ATTACKS", "DataError", "GLUE_TASKS", "Instruction", "InstructionSet", "LEVELS", "Perturbation", "TASKS",
    "TaskData", "TaskSpec", "check_label_words", "check_requested_attacks", "column_mappings",
    "content_free_priors", "evaluate", "evaluate_models", "generate_instruction_set",
    "generate_texts", "get_task", "label_scores", "load_instruction_file", "load_results", "load_task_data",
    "markdown_report", "parse_adv_markdown", "parse_attacks", "parse_prediction", "parse_tasks", "perturb",
    "plot_representations", "pooled_representations", "promptbench_instruction_set", "register_task",
    "render_prompt", "representation_analysis", "resolve_instructions", "save_examples", "select_subset",
    "summarize_model", "summarize_task", "write_report",
]
