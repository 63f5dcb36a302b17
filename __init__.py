"""fleetcloak: a privacy layer for Teltonika vehicle telematics on Kafka."""

__version__ = "0.1.0"
