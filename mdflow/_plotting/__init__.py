"""Figures, drawn only from stored results: one style, the run previews and F1-F7."""
