"""The procedural sprites world the embedded default model is trained on, and its metrics."""
