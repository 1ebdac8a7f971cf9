"""sitecustomize files for real upstream runs at twin scale (twin.upstream.sitecustomize): each is copied into the
run folder as sitecustomize.py, whose folder alone goes first on the upstream child's PYTHONPATH (repro's own
packages stay off it). Each is declared, with its measured reason, in the recipe's twin.upstream.cpu_changes."""
