"""How trio-ws's long-running pieces run, shared by every layer above core:
stop signals, backoff between tries, supervised restarts, saying a thing once."""
