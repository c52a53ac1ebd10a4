"""prepare() -> Session, the trainer over stages, the loop, the feature cache, optimizers, resume, lr_find."""
