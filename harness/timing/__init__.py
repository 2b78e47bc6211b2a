"""Speed: the sweep's speed probe and the per-step decode latency bench."""
