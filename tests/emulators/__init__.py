"""Local emulators of the cloud providers' HTTP protocols (127.0.0.1 only)."""
