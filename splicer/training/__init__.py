"""Training: stage-1 SFTN loss, stage-2 distillation methods, the trainer."""
