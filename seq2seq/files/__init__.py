"""Files and run-directory plumbing: atomic writes, outputs that never land on inputs, text lines, locks."""
