"""The embedded environment: everything needed to run kubetune on one machine with no
cluster, GPU or network — the real Kubernetes control plane built from its Go modules, a
node agent in the kubelet's place, S3 (moto) on the pod network, the real kubectl and
helm binaries, and a tiny locally built model. Used by the tests and by the README's
demo; never by the operator in a cluster."""
