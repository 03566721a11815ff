"""The Tiramisu person-segmentation network: model, backends, training and evaluation."""
