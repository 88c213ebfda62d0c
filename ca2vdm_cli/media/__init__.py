"""What turns pixels and prompts into tensors and back: text encoders, VAEs, video and image I/O."""
