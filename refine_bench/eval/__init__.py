"""Evaluation: lm-eval tasks' data and scorers, the `refine-bench` lm-eval model, and the harness runner.

Importing this package is cheap; the lm-eval model lives in `refine_bench.eval.lm` (import it, or call
`register()`, to make `refine-bench` known to lm-eval).
"""
