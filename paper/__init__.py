"""The paper's tooling, run from the repository's root: `python -m paper.reproduce` (the paper's experiments as data,
the suite runner, its tables and verdicts), `python -m paper.theory` (the linear-network theory and its figures) and
`python -m paper.gpu` (the prepared GPU run: speed, Fashion-MNIST at full width, the CUDA tests, within a budget).
It imports the core (train.py, plumbing.py, directpred.py, bench.py) and restates none of it."""
