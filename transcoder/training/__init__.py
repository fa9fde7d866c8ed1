"""Training loop pieces: resumable sampler, trainer state and the trainer itself."""
