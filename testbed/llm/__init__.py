"""The LM track: a causal-LM policy, LM rewards, and REBEL/PPO/RLOO/DPO/SFT on the shared losses.

Needs the ``llm`` extra (transformers, peft, accelerate, tokenizers); importing this package does
not import them until a submodule is used.
"""
