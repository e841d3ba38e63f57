"""The model: the encoder-decoder Transformer, its attention, positions and Performer, and its FLOPs."""
