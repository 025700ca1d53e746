"""Unlearning guided by interpretability, with an honest evaluation (tasks, methods, evaluation, runs)."""
