"""RISE: multi-turn rollouts, curated into reward-weighted SFT data, trained with a weighted loss."""
