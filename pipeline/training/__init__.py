"""The train stage's launcher (accelerate), its worker entry point, and what every method's trainer shares."""
