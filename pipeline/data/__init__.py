"""The data stage: the built-in synthetic dataset, COCO-format datasets on disk, their stats."""
