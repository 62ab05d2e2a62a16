"""ExIt: GRPO on single improvement steps drawn from a buffer of learnable partial histories."""
