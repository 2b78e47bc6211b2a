"""The embedded default workload: the synthetic reasoning task, its tokenizer, and the tiny reasoning model."""
