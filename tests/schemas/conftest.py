"""The schemas tests use the suite-wide `gcs` emulator fixture in tests/conftest.py."""
