"""WIDER FACE as a data source: its official files (annotation text, validation ground truth,
prediction folders) read and written, converted to COCO JSON. The official evaluation, which
stands on these, is `pipeline.widerface`."""
