"""gpt: nanoGPT-style GPT models, trained as an iterator of events.

Importing this package imports nothing heavy; `gpt.config` stays torch-free so that the
API can validate configs without a GPU stack. The training loop is in gpt.train.
"""
