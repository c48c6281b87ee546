"""Over-the-air model updates on the device: slots, downloads, shadow runs, the update itself."""
