"""Text encoder service: tokenizer + BERT-family encoder (default all-MiniLM-L6-v2)."""
