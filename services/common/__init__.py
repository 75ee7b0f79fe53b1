"""Code every service shares: runtime, codec, errors, telemetry, config, security, batching."""
