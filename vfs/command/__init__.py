"""The `ngffmount` command and the daemon process it starts: options, mounting, the serving process, the system service, cache commands."""
