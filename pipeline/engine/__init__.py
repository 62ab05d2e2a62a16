"""Generation backends behind one interface: the vLLM servers and their client, the hf fallback, adapters, models."""
