"""AceRAG compressive-encoder twin (VectorSpaceLab/LightRAG @bce608d1, AceRAG/main/train_compressive_encoder.py).

``compress`` holds the pure bookkeeping (selection, truncation, windows), ``model`` the frozen LM plus
trained encoder, ``data`` the generated rows in the published formats, ``train`` the entry point.
"""
