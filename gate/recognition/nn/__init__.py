"""Neural-network encoders: dlib's face-recognition ResNet re-implemented in torch."""
