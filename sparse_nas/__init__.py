"""sparse_nas."""
