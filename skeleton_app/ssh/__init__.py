"""SSH, the one seam to the nodes. `pool` (the Connector: pooled Paramiko links), `route` (how a
node is reached: ssh_config, jump hosts, ProxyCommand), `transport` (TCP connect, our
transport, liveness, `Link`), `channel` (driving one command), `hostkeys` (pins and policy),
`errors` (the one translation table), `session` (a line conversation), `runner` (the Runner
protocol), `openssh` and `openssh_config` (OpenSSH argv and login resolution, no Paramiko),
`fabric` (the Fabric face: imports the pool, never the reverse).

This package file stays empty so that importing a light part (openssh_config) never
imports Paramiko."""
