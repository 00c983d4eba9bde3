"""SNS task definitions: how a benchmark item becomes a prompt, what its gold answer is, how an answer is
scored. Imported by ``redone.data`` (training examples, preference pairs) and ``redone.eval`` (benchmarks);
imports neither.

- ``tasks``: the task registry (12 SNS-Bench files, SNS-TransBench both directions, user tasks from code
  or YAML), prompt builders in the "redone" and "official" styles, gold answers, item loading.
- ``scoring``: the SNS-Bench scorers (official and fixed modes) and per-item metrics.
- ``transbench``: SNS-TransBench BLEU / chrF++.
"""
