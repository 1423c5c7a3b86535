"""The baseline detector: torchvision Faster R-CNN builders, a small CPU architecture, training and inference."""
