"""Model folders: run directories (weights, checkpoints, snapshots) and exported CTranslate2 folders."""
