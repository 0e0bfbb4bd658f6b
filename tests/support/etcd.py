"""Fixture: a real etcd (Debian etcd-server) on 127.0.0.1 with a temporary data dir."""
