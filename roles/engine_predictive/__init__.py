"""Role engine-predictive: MLServer replicas serving scikit-learn (skops) and ONNX models through Podium's runtimes."""
