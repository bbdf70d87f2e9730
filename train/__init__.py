"""Trainers launched from a manifest: DiffHDR (issue #7) and HDR-V-Diff (issue #8). Nothing is implemented here yet."""
