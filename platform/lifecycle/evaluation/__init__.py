"""Evaluation as a feature: ask a graph or a knowledge base a questions file, score it.

- :mod:`.questions`: the questions file (JSONL), checked line by line before anything runs;
- :mod:`.runner`: asks the running platform over its HTTP API and writes one output line
  per question (the contract in ``docs/eval.md``);
- :mod:`.metrics`: pure functions from gold fields and outputs to the metrics.

``qingliang eval run`` (``platform/cli/eval_cmd.py``) puts them together.
"""
