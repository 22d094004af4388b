"""The paper's tooling, run from the repository's root: `python -m paper.reproduce` (the paper's experiments as data,
the suite runner, its tables and verdicts) and `python -m paper.theory` (the linear-network theory and its figures).
It imports the core (train.py, plumbing.py, directpred.py) and restates none of it."""
