"""ToolGen twin (Reason-Wang/ToolGen @6839374, training/train.py): virtual tool tokens and the three stages.

``vtokens`` reads the tool list and initialises the new embedding rows, ``conversation`` renders the
llama-3 template with per-message loss flags, ``data`` generates the three published row formats,
``train`` is the entry point the deepspeed launcher runs.
"""
