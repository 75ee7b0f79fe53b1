"""Audio encoder service (decoding, log-mel frames, voice activity, transcripts) and speech synthesis."""
