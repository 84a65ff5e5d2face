"""Per-stream state checkpoints: the record codec, the checkpointer and its stores."""
