"""What server and client share: offline datasets, partitioners and models."""
