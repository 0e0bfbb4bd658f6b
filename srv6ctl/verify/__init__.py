"""`srv6ctl verify`: prove on the wire what the control plane claims (scapy + sockets).

Imports stay light here: the CLI registers the subcommand from `srv6ctl.verify.cli`.
"""
