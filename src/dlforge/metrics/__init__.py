"""Evaluation metrics and report plots shared by `dlforge finetune` tasks and the benchmarks."""
