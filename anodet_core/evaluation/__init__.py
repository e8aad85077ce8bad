"""Evaluation: the paper's metrics, evaluating and comparing models, model-only throughput."""
