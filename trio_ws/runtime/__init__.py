"""What every layer above core shares, and core may not (it imports no trio): stop
signals, delays between tries, objects that only their factories make."""
