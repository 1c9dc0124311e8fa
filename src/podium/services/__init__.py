"""Programs Podium itself runs on nodes: the gateway and small engine adaptors."""

# Keep this file free of imports: MLServer's own venv imports
# podium.services.mlserver_skops and mlserver_onnx without any of Podium's dependencies.
