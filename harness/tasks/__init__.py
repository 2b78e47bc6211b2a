"""lm-eval task YAMLs shipped with dynts-bench and their shared ``utils`` (loaders, prompts, scoring)."""
