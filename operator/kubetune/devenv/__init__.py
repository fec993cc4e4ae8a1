"""The embedded environment: everything needed to run kubetune on one machine with no
cluster, GPU or network — an emulated API server, S3 on loopback, a test kubelet, the
real kubectl and helm binaries, and a tiny locally built model. Used by the tests and
by the README's demo; never by the operator in a cluster."""
