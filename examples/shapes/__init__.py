"""The shapes world model: tokenizer and (later) training scripts for the shipped text-to-image model."""
