"""The DynTS importance predictor pipeline: traces, labels, training, evaluation and analysis."""
