"""Evaluation metrics (SPEC §2 reconstruction, §4 generation): reconstruction IoU, and IS / FID / KID /
precision-recall on feature arrays produced by dcgen's own feature networks. Pure numpy/torch; no Ray, no files read
at import."""
