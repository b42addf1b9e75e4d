"""SSH: the pooled Paramiko connector, its options and errors, OpenSSH argv, the Fabric face.

This package file stays empty so that importing a light part (openssh_config) never
imports Paramiko."""
