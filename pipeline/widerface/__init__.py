"""WIDER FACE's official evaluation (Easy / Medium / Hard AP, as the MATLAB toolkit computes it),
its scores and report; the dataset's files are read by `pipeline.data.widerface`."""
