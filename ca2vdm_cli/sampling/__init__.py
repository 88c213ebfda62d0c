"""Samplers: the inference maths of each family (flow matching few-step lists in `flow`)."""
