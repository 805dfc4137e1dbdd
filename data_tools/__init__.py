"""coin.data_tools: from instruction data to contrastive training data (docs/data.md).

    schema.py       record schemas (coin.instruction/1, coin.contrastive/1), validation, render_prompt
    readers.py      JSONL / JSON / Parquet / CSV / datasets sources, validated reading, atomic writing
    importers.py    the CoIN release CSV, FLAN-style records, any source with a column map
    templates.py    templates files (flan_v2_patterns.json format): render, invert, alternatives
    units.py        what a paraphrase backend rewrites for a record, and what must survive
    backends/       paraphrase backends: templates, wordnet (offline WordNet), llm (local HF model)
    filters.py      paraphrase filters, every drop counted; similarity.py: sentence-embedding cosine
    augment.py      `coin augment`: sharded, resumable augmentation and the merge (shards.py)
    pairs.py        `coin pairs`: contrastive records with hard-negative groups
    sampler.py      GroupedBatchSampler and the per-epoch paraphrase choice (used by the trainer)
    token_cache.py  build_token_cache: the records tokenised to Arrow (used by the trainer)
    prompt.py       PromptFormat and encode: the one prompt format (training, cache, evaluation)
    demo.py         the demo FLAN-style multi-task dataset
    cli.py          `coin data`: demo, import, validate, convert, tokenize
    summary.py, progress.py, atomic.py   counts tables, progress bars, atomic files and fingerprints

Modules are imported lazily by the commands; importing this package loads nothing heavy.
"""
