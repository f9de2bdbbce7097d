"""Handing a trained model over: an ONNX export checked against PyTorch (``onnx``) and a model card
(``card``) that states the intended use, the data, the figures per population and the operating point."""
