"""Export of a run's model (Hugging Face checkpoint with a card) and of its data (parquet dataset)."""
