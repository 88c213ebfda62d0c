"""Model cards, presets, Hub downloads, resolution to a local model directory, memory planning."""
