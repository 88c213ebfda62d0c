"""Engine parts shared by every model family: frame-ring bookkeeping (more to come: the AR loop)."""
