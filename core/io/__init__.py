"""On-disk formats: COCO JSON, dataset index, atomic writes."""
