"""Looking inside runs: summaries, metrics records, curves, heatmaps, TensorBoard, alignments."""
